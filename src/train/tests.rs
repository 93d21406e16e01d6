//! The descent loop's tests: replayed against taped training, freezing, a user's models,
//! stop conditions and checkpoints.

use super::*;
use crate::autodiff::Var;
use crate::data::Dataset;
use crate::nn::{Activation, Init, Mlp};
use crate::optim::OptimizerKind;

/// A tanh MLP of `sizes` with PyTorch's initialisation, drawn from `seed`.
fn tanh_mlp(store: &mut ParamStore<f32>, sizes: &[usize], seed: u64) -> Mlp {
    let rng = &mut crate::nn::rng(seed);
    Mlp::new(store, sizes, Activation::Tanh, Init::TorchDefault, rng).unwrap()
}

/// Two epochs of the digits with SGD, replayed or on the tape: the parameters after
/// 30 steps (a last, smaller batch in each epoch included).
fn digits_run(replay: bool) -> (ParamStore<f32>, TrainReport, usize) {
    let (train, val) = Dataset::digits().unwrap().split(0.2, 1).unwrap();
    let mut store = ParamStore::new();
    let model = tanh_mlp(&mut store, &[64, 32, 10], 3);
    let mut opt = OptimizerKind::Sgd.build::<f32>(0.05, None).unwrap();
    let trainer = Trainer::new(TrainConfig {
        batch_size: 100,
        max_epochs: Some(2),
        clip_norm: Some(1.0),
        replay,
        ..Default::default()
    })
    .unwrap();
    let report = trainer
        .fit_from_start(
            &mut Classification::new(&model, &train, &val, 100, true).unwrap(),
            &mut store,
            opt.as_mut(),
        )
        .unwrap();
    let traces = trainer.traces.borrow().len();
    (store, report, traces)
}

#[test]
fn replayed_training_follows_the_taped_one() {
    let (eager, r_eager, none) = digits_run(false);
    let (replayed, r_replay, traces) = digits_run(true);
    assert_eq!(none, 0);
    // one trace for the full batches, one for the last smaller batch of an epoch
    assert_eq!(traces, 2);
    assert_eq!(r_eager.steps, r_replay.steps);
    for ((_, name, a), (_, _, b)) in eager.iter().zip(replayed.iter()) {
        let scale = a.norm().max(1e-12);
        let d = a.max_abs_diff(b).unwrap() / scale;
        assert!(d <= 1e-6, "{name}: {d}");
    }
    for (a, b) in r_eager.history.iter().zip(&r_replay.history) {
        assert!(
            (a.val_loss - b.val_loss).abs() <= 1e-6 * a.val_loss.abs(),
            "{a:?} {b:?}"
        );
    }
}

/// A trainer of one epoch of the digits, replayed or on the tape.
fn one_epoch(replay: bool) -> Trainer {
    Trainer::new(TrainConfig {
        batch_size: 100,
        max_epochs: Some(1),
        replay,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn freezing_and_unfreezing_between_fits_is_obeyed_replayed_and_eager() {
    for replay in [false, true] {
        let (train, val) = Dataset::digits().unwrap().split(0.2, 1).unwrap();
        let mut store = ParamStore::new();
        let model = tanh_mlp(&mut store, &[64, 16, 10], 3);
        let mut opt = OptimizerKind::Sgd.build::<f32>(0.05, None).unwrap();
        let trainer = one_epoch(replay);
        let mut task = Classification::new(&model, &train, &val, 100, true).unwrap();
        let (body, head) = (&model.layers[0], &model.layers[1]);
        let values = |store: &ParamStore<f32>, ids: [crate::nn::ParamId; 2]| {
            ids.map(|id| store.get(id).clone())
        };
        // a frozen body does not move, the head does
        store.freeze(body.weight);
        store.freeze(body.bias.unwrap());
        let (body0, head0) = (
            values(&store, [body.weight, body.bias.unwrap()]),
            values(&store, [head.weight, head.bias.unwrap()]),
        );
        trainer
            .fit_from_start(&mut task, &mut store, opt.as_mut())
            .unwrap();
        let (body1, head1) = (
            values(&store, [body.weight, body.bias.unwrap()]),
            values(&store, [head.weight, head.bias.unwrap()]),
        );
        assert_eq!(body0, body1, "replay {replay}: a frozen parameter moved");
        assert!(head0 != head1, "replay {replay}: the head did not train");
        // unfrozen, the body trains with the same trainer; the head, frozen now, stays
        store.unfreeze(body.weight);
        store.unfreeze(body.bias.unwrap());
        store.freeze(head.weight);
        store.freeze(head.bias.unwrap());
        trainer
            .fit_from_start(&mut task, &mut store, opt.as_mut())
            .unwrap();
        let (body2, head2) = (
            values(&store, [body.weight, body.bias.unwrap()]),
            values(&store, [head.weight, head.bias.unwrap()]),
        );
        assert!(
            body1[0] != body2[0] && body1[1] != body2[1],
            "replay {replay}: the unfrozen body did not move"
        );
        assert_eq!(
            head1, head2,
            "replay {replay}: a parameter frozen after a fit moved"
        );
    }
}

/// A model of a user's own: the MLP's layers with dropout after the hidden one, opted
/// into replay as a user would (a graph name), knowing nothing of what replay does.
struct UserModel {
    mlp: Mlp,
    dropout: crate::nn::Dropout,
}

impl crate::nn::Classifier<f32> for UserModel {
    fn logits<'t>(
        &self,
        p: &crate::nn::Params<'t, f32>,
        x: Var<'t, f32>,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, f32>> {
        let h = self.mlp.layers[0].forward(p, x)?.tanh();
        let h = self.dropout.forward(h, ctx)?;
        self.mlp.layers[1].forward(p, h)
    }
    fn replay_graph(&self) -> Option<String> {
        Some("user model".into())
    }
}

#[test]
fn a_user_model_with_dropout_trains_the_same_replayed_and_eager() {
    let (train, val) = Dataset::digits().unwrap().split(0.2, 1).unwrap();
    let run = |p: f64, replay: bool| {
        let mut store = ParamStore::new();
        let mlp = tanh_mlp(&mut store, &[64, 16, 10], 3);
        let model = UserModel {
            mlp,
            dropout: crate::nn::Dropout { p },
        };
        let mut opt = OptimizerKind::Sgd.build::<f32>(0.05, None).unwrap();
        let trainer = one_epoch(replay);
        let mut task = Classification::new(&model, &train, &val, 100, true).unwrap();
        trainer
            .fit_from_start(&mut task, &mut store, opt.as_mut())
            .unwrap()
    };
    let eager = run(0.8, false);
    let replayed = run(0.8, true);
    assert_eq!(eager.step_losses, replayed.step_losses);
    assert!(eager.warnings.is_empty(), "{:?}", eager.warnings);
    assert_eq!(replayed.warnings.len(), 1, "{:?}", replayed.warnings);
    assert!(
        replayed.warnings[0].contains("dropout"),
        "{:?}",
        replayed.warnings
    );
    // and dropout changes what the replayed run computes
    let without = run(0.0, true);
    assert!(without.warnings.is_empty(), "{:?}", without.warnings);
    assert!(without.step_losses != replayed.step_losses);
    let mean = |r: &TrainReport| r.step_losses.iter().sum::<f64>() / r.step_losses.len() as f64;
    assert!(
        mean(&replayed) > mean(&without),
        "dropout 0.8 makes training harder"
    );
}

#[test]
fn a_regression_trains_a_model_of_a_users_own() {
    // y = sin(x₀) + x₁/2 from 256 samples, by the user's model (dropout off)
    let x = Tensor::<f32>::splitmix_uniform(&[256, 64], 5, -1.0, 1.0).unwrap();
    let y: Vec<f32> = x
        .data()
        .chunks(64)
        .map(|r| r[0].sin() + r[1] / 2.0)
        .collect();
    let y = Tensor::from_vec(y, &[256, 1]).unwrap();
    let mut store = ParamStore::new();
    let mlp = tanh_mlp(&mut store, &[64, 16, 1], 3);
    let model = UserModel {
        mlp,
        dropout: crate::nn::Dropout { p: 0.0 },
    };
    let mut opt = OptimizerKind::Adam.build::<f32>(1e-2, None).unwrap();
    let trainer = Trainer::new(TrainConfig {
        batch_size: 32,
        max_epochs: Some(30),
        ..Default::default()
    })
    .unwrap();
    let mut task = Regression::new(&model, (x.clone(), y.clone()), (x, y), 32, true).unwrap();
    let report = trainer
        .fit_from_start(&mut task, &mut store, opt.as_mut())
        .unwrap();
    let first = report.history.first().unwrap().val_loss;
    assert!(
        report.best_val_metric < 0.1 * first,
        "{first} → {}",
        report.best_val_metric
    );
}

#[test]
fn a_start_position_beyond_the_epoch_is_an_error_not_a_panic() {
    let ds = Dataset::new(
        Tensor::from_vec((0..20).map(|v| v as f32).collect(), &[10, 2]).unwrap(),
        (0..10).map(|i| i % 2).collect(),
        2,
        "ten",
    )
    .unwrap();
    let mut store = ParamStore::new();
    let model = Mlp::new(
        &mut store,
        &[2, 3, 2],
        Activation::Relu,
        Init::HeUniform,
        &mut crate::nn::rng(0),
    )
    .unwrap();
    let mut opt = OptimizerKind::Sgd.build::<f32>(0.1, None).unwrap();
    let trainer = Trainer::new(TrainConfig {
        batch_size: 5,
        ..Default::default()
    })
    .unwrap();
    // saved with batch size 1: batch 7 of 10; this run has 2 batches per epoch
    let start = Position {
        batch: 7,
        ..Default::default()
    };
    let e = trainer
        .fit(
            &mut Classification::new(&model, &ds, &ds, 5, true).unwrap(),
            &mut store,
            opt.as_mut(),
            start,
            &mut [],
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("resumes at batch 7 of an epoch that has 2 batches"),
        "{e}"
    );
}

#[test]
fn a_target_on_a_loss_is_reached_from_above() {
    let x = Tensor::<f32>::splitmix_uniform(&[64, 2], 5, -1.0, 1.0).unwrap();
    let y: Vec<f32> = x.data().chunks_exact(2).map(|r| r[0] * r[1]).collect();
    let y = Tensor::from_vec(y, &[64, 1]).unwrap();
    let mut store = ParamStore::new();
    let model = Mlp::new(
        &mut store,
        &[2, 16, 1],
        Activation::Tanh,
        Init::XavierUniform,
        &mut crate::nn::rng(0),
    )
    .unwrap();
    let mut objective = Regression::new(&model, (x.clone(), y.clone()), (x, y), 16, true).unwrap();
    assert_eq!(objective.metric().goal, Goal::Minimize);
    let first = objective.evaluate(&store).unwrap().loss;
    let mut opt = crate::optim::OptimizerKind::Adam
        .build::<f32>(0.01, None)
        .unwrap();
    let trainer = Trainer::new(TrainConfig {
        batch_size: 16,
        target: Some(first * 0.5),
        max_epochs: Some(500),
        ..Default::default()
    })
    .unwrap();
    let r = trainer
        .fit_from_start(&mut objective, &mut store, opt.as_mut())
        .unwrap();
    assert_eq!(r.stopped_by, StopReason::Target, "{}", r.stop_detail);
    assert!(r.best_val_metric <= first * 0.5);
    assert!(
        r.history
            .iter()
            .rev()
            .skip(1)
            .all(|h| h.val_metric > first * 0.5)
    );
    // the best evaluation is the lowest loss
    let lowest = r
        .history
        .iter()
        .map(|h| h.val_loss)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(r.best_val_metric, lowest);
}

/// Checkpoints are written when the best metric improves, at every k-th evaluation
/// when asked, and when the run stops; with a learning rate of 0 nothing improves
/// after the first evaluation.
#[test]
fn checkpoints_follow_improvement_every_k_and_the_end() {
    struct Watch {
        inner: CheckpointWriter,
        path: std::path::PathBuf,
        saved_at: Vec<usize>,
    }
    impl Watch {
        fn note(&mut self) {
            let step = load_checkpoint(&self.path).unwrap().meta.position.step;
            if self.saved_at.last() != Some(&step) {
                self.saved_at.push(step);
            }
        }
    }
    impl Callback for Watch {
        fn on_eval(&mut self, s: &Snapshot<'_>) -> Result<()> {
            self.inner.on_eval(s)?;
            self.note();
            Ok(())
        }
        fn on_stop(&mut self, s: &Snapshot<'_>) -> Result<()> {
            self.inner.on_stop(s)?;
            self.note();
            Ok(())
        }
    }
    let dir = std::env::temp_dir().join(format!("chainrule-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let x = Tensor::<f32>::splitmix_uniform(&[64, 2], 5, -1.0, 1.0).unwrap();
    let y = Tensor::<f32>::splitmix_uniform(&[64, 1], 6, -1.0, 1.0).unwrap();
    for (every, want) in [(None, vec![4, 20]), (Some(2), vec![4, 12, 20])] {
        let mut store = ParamStore::new();
        let model = Mlp::new(
            &mut store,
            &[2, 4, 1],
            Activation::Tanh,
            Init::XavierUniform,
            &mut crate::nn::rng(0),
        )
        .unwrap();
        let mut objective = Regression::new(
            &model,
            (x.clone(), y.clone()),
            (x.clone(), y.clone()),
            16,
            true,
        )
        .unwrap();
        let mut opt = OptimizerKind::Sgd.build::<f32>(0.1, None).unwrap();
        let path = dir.join(format!("{every:?}.safetensors"));
        let meta = CheckpointMeta {
            version: super::CHECKPOINT_VERSION,
            sizes: vec![2, 4, 1],
            activation: Activation::Tanh,
            dropout: 0.0,
            model: None,
            standardizer: None,
            vocab: None,
            position: Position::default(),
            config: serde_json::Value::Null,
            data: None,
        };
        let mut watch = Watch {
            inner: CheckpointWriter::new(path.clone(), meta).every(every),
            path,
            saved_at: Vec::new(),
        };
        let trainer = Trainer::new(TrainConfig {
            batch_size: 16,
            max_epochs: Some(5),
            schedule: crate::optim::LrSchedule::constant(0.0),
            ..Default::default()
        })
        .unwrap();
        let r = trainer
            .fit(
                &mut objective,
                &mut store,
                opt.as_mut(),
                Position::default(),
                &mut [&mut watch],
            )
            .unwrap();
        assert_eq!(r.steps, 20);
        assert_eq!(r.history.len(), 5);
        assert_eq!(watch.saved_at, want, "--checkpoint-every {every:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A checkpoint of format version 1 held the MLP's weights as `[in, out]`: read now, its
/// weights and their Adam moments come back in `Linear`'s layout, `[out, in]`, so that
/// the restored model computes what the saved one did.
#[test]
fn a_version_1_checkpoint_restores_its_weights_in_pytorchs_layout() {
    use crate::optim::Optimizer;
    let mut store = ParamStore::new();
    let model = tanh_mlp(&mut store, &[3, 4, 2], 5);
    let grads: Vec<Option<Tensor<f32>>> = store
        .iter()
        .map(|(_, _, t)| Some(Tensor::splitmix_uniform(t.shape(), 9, -1.0, 1.0).unwrap()))
        .collect();
    let mut adam = crate::optim::Adam::new(1e-2, 0.0, false);
    adam.step(&mut store, &grads).unwrap();
    // the same run as version 1 wrote it: every layer's weight and its moments [in, out]
    let old = |name: &str, t: &Tensor<f32>| match t.shape() {
        [_, _] if name.ends_with(".weight") => t.t().unwrap(),
        _ => t.clone(),
    };
    let mut old_store = ParamStore::new();
    for (_, name, t) in store.iter() {
        old_store.add(name, old(name, t)).unwrap();
    }
    let (state, steps) = adam.state();
    let names: Vec<String> = store.iter().map(|(_, n, _)| n.to_string()).collect();
    let old_state: Vec<(String, Tensor<f32>)> = state
        .iter()
        .map(|(entry, t)| {
            let i: usize = entry.split_once('.').unwrap().0.parse().unwrap();
            (entry.clone(), old(&names[i], t))
        })
        .collect();
    let mut old_adam = crate::optim::Adam::new(1e-2, 0.0, false);
    old_adam.load_state(old_state, steps, &old_store).unwrap();
    let dir = std::env::temp_dir().join(format!("chainrule-v1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v1.safetensors");
    let meta = CheckpointMeta {
        version: 1,
        sizes: vec![3, 4, 2],
        activation: Activation::Tanh,
        dropout: 0.0,
        model: None,
        standardizer: None,
        vocab: None,
        position: Position::default(),
        config: serde_json::Value::Null,
        data: None,
    };
    super::checkpoint::save_checkpoint(&path, &meta, &old_store, &old_adam).unwrap();
    let ckpt = crate::train::load_checkpoint(&path).unwrap();
    let mut restored = ParamStore::new();
    tanh_mlp(&mut restored, &[3, 4, 2], 6);
    ckpt.restore_params(&mut restored).unwrap();
    for ((_, name, a), (_, _, b)) in store.iter().zip(restored.iter()) {
        assert_eq!(a, b, "{name}");
    }
    let x = Tensor::<f32>::splitmix_uniform(&[5, 3], 2, -1.0, 1.0).unwrap();
    assert_eq!(
        model.infer(&store, &x).unwrap(),
        model.infer(&restored, &x).unwrap()
    );
    let mut state_now = ckpt.optimizer_state(&restored).unwrap();
    let mut want = state.clone();
    state_now.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(state_now, want);
    std::fs::remove_dir_all(&dir).unwrap();
}
