//! An op of your own: softplus, ln(1 + eˣ), with its forward kernel, its reverse rule
//! (VJP), its forward rule (JVP) and a composition in built-in ops for second order;
//! checked against central differences in both orders, then used in a model trained on
//! the digits. `cargo run --release --example own_op`
use chainrule::autodiff::{CustomOp, SuiteCase, Tangents, gradcheck, second_order_suite};
use chainrule::data::{Dataset, Standardizer};
use chainrule::nn::{Classifier, ForwardCtx, Init, Linear, ParamStore, Params};
use chainrule::optim::OptimizerKind;
use chainrule::train::{Classification, TrainConfig, Trainer};
use chainrule::{Element, Error, Result, Tensor, Var};
use std::sync::Arc;

struct Softplus;

impl<T: Element> CustomOp<T> for Softplus {
    fn name(&self) -> &str {
        "softplus"
    }
    // d softplus(x)/dx = σ(x)
    fn vjp(&self, x: &[&Tensor<T>], _y: &Tensor<T>, g: &Tensor<T>) -> Result<Vec<Tensor<T>>> {
        Ok(vec![g.mul(&x[0].sigmoid())?])
    }
    fn jvp(&self, x: &[&Tensor<T>], _y: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
        t[0].map_or_else(|| Ok(x[0].zeros_like()), |t| t.mul(&x[0].sigmoid()))
    }
    // what second order differentiates: max(x, 0) + ln(1 + e^−|x|), in built-in ops
    fn composed<'t>(&self, v: &[Var<'t, T>]) -> Option<Result<Var<'t, T>>> {
        Some(v[0].relu().add(v[0].abs().neg().exp().add_scalar(1.0).ln()))
    }
}

/// softplus(x), recorded as one node: the kernel computes the value, the rules above
/// its derivatives.
fn softplus<'t, T: Element>(x: Var<'t, T>) -> Result<Var<'t, T>> {
    let v = x.value();
    let value = v.relu().add(&v.abs().neg().exp().add_scalar(1.0).ln())?;
    Var::custom(&[x], Arc::new(Softplus), value)
}

struct SoftplusMlp(Linear, Linear);

impl Classifier<f32> for SoftplusMlp {
    fn logits<'t>(
        &self,
        p: &Params<'t, f32>,
        x: Var<'t, f32>,
        _: &mut ForwardCtx,
    ) -> Result<Var<'t, f32>> {
        self.1.forward(p, softplus(self.0.forward(p, x)?)?)
    }
    fn replay_graph(&self) -> Option<String> {
        Some("softplus mlp".into()) // no dropout: its steps can be replayed
    }
}

fn main() -> Result<()> {
    // first order: reverse and forward mode against central differences, in f64
    let x = Tensor::<f64>::randn(&[3, 4], 1)?;
    let first = gradcheck(
        |_, v| Ok(softplus(v[0])?.sum_all()),
        std::slice::from_ref(&x),
        &Default::default(),
    )?;
    println!(
        "first order: worst relative error {:.1e}",
        first.max_rel_err
    );
    // second order: H·v through the composition, beside every built-in op
    let case = SuiteCase {
        op: "softplus".into(),
        inputs: vec![x],
        f: Box::new(|_, v| softplus(v[0])),
    };
    let suite = second_order_suite(0, 1e-6, vec![case]);
    let second = suite
        .ops
        .iter()
        .find(|r| r.op == "softplus")
        .expect("checked");
    println!(
        "second order: worst relative error {:.1e}",
        second.max_rel_err
    );
    if !first.passed(1e-6) || !second.passed {
        return Err(Error::invalid(
            "own_op",
            "softplus's rules disagree with differences",
        ));
    }

    let (train, val) = Dataset::digits()?.split(0.2, 0)?;
    let scale = Standardizer::fit(&train);
    let (train, val) = (scale.apply(&train)?, scale.apply(&val)?);
    let mut store = ParamStore::new();
    let mut rng = chainrule::nn::rng(0);
    let body = Linear::new(&mut store, "body", 64, 32, Init::TorchDefault, &mut rng)?;
    let model = SoftplusMlp(
        body,
        Linear::new(&mut store, "head", 32, 10, Init::TorchDefault, &mut rng)?,
    );
    let mut adam = OptimizerKind::Adam.build::<f32>(3e-3, None)?;
    let trainer = Trainer::new(TrainConfig {
        batch_size: 32,
        max_epochs: Some(10),
        ..Default::default()
    })?;
    let mut task = Classification::new(&model, &train, &val, 32, true)?;
    let report = trainer.fit_from_start(&mut task, &mut store, adam.as_mut())?;
    println!(
        "a softplus MLP: {:.4} validation accuracy",
        report.best_val_metric
    );
    if report.best_val_metric < 0.9 {
        return Err(Error::invalid(
            "own_op",
            "the softplus MLP did not learn the digits",
        ));
    }
    Ok(())
}
