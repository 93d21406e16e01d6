//! Newton-CG against Adam on a convex problem: multinomial logistic regression on the
//! standardised digits (64 pixels → 10 classes, L2 penalty 1e-3, full batch, f64).
//! Newton-CG touches the Hessian only through Hessian-vector products.
//! `cargo run --release --example newton_cg`

use chainrule::data::{Dataset, Standardizer, gather_batch};
use chainrule::nn::ParamStore;
use chainrule::optim::OptimizerKind;
use chainrule::optim::newton::{NewtonCgOptions, logistic, newton_cg};
use chainrule::tensor::Tensor;
use std::time::Instant;

fn main() -> Result<(), chainrule::Error> {
    let (train, _) = Dataset::digits()?.split(0.2, 0)?;
    let train = Standardizer::fit(&train).apply(&train)?;
    let rows: Vec<usize> = (0..train.len()).collect();
    let (x, y) = gather_batch(&train, &rows);
    let x: Tensor<f64> = x.cast();
    let l2 = 1e-3;
    let start = || {
        vec![
            Tensor::<f64>::zeros(&[64, 10]).unwrap(),
            Tensor::zeros(&[10]).unwrap(),
        ]
    };

    let t = Instant::now();
    let mut p = start();
    let r = newton_cg(
        |p| logistic::value_grad(p, &x, &y, l2),
        |p, v| logistic::hessian_vector(p, v, &x, &y, l2),
        &mut p,
        &NewtonCgOptions::default(),
    )?;
    let best = *r.losses.last().expect("at least the first loss");
    if r.gradient_norm.is_nan() || r.gradient_norm > 1e-6 {
        return Err(chainrule::Error::invalid(
            "newton_cg",
            format!("stopped at a gradient norm of {:.1e}", r.gradient_norm),
        ));
    }
    println!(
        "Newton-CG: loss {best:.10} (gradient norm {:.1e}) after {} steps, {} Hessian-vector products and {} gradients, {:.3} s",
        r.gradient_norm,
        r.iterations,
        r.hessian_products,
        r.gradient_evaluations,
        t.elapsed().as_secs_f64()
    );

    println!(
        "Adam, full batch, from the same start: steps until the loss is within 1e-4 and 1e-6 of Newton-CG's"
    );
    for lr in [0.01, 0.05, 0.2] {
        let t = Instant::now();
        let mut store = ParamStore::<f64>::new();
        for (name, v) in ["w", "b"].into_iter().zip(start()) {
            store.add(name, v)?;
        }
        let mut adam = OptimizerKind::Adam.build::<f64>(lr, None)?;
        let (mut at4, mut at6, mut last) = (None, None, f64::NAN);
        for step in 0..20_000 {
            let q: Vec<Tensor<f64>> = store.iter().map(|(_, _, t)| t.clone()).collect();
            let (l, g) = logistic::value_grad(&q, &x, &y, l2)?;
            last = l;
            if at4.is_none() && l - best <= 1e-4 {
                at4 = Some(step);
            }
            if l - best <= 1e-6 {
                at6 = Some(step);
                break;
            }
            let g: Vec<Option<Tensor<f64>>> = g.into_iter().map(Some).collect();
            adam.step(&mut store, &g)?;
        }
        let show = |s: Option<usize>| s.map_or("not in 20,000".to_string(), |s| s.to_string());
        println!(
            "  lr {lr:<5} within 1e-4: {:>14}   within 1e-6: {:>14}   (loss {last:.10}, {:.2} s)",
            show(at4),
            show(at6),
            t.elapsed().as_secs_f64()
        );
        // the problem is convex: Adam must reach Newton-CG's minimum, never pass below it
        if at6.is_none() || last < best - 1e-8 {
            return Err(chainrule::Error::invalid(
                "newton_cg",
                format!("Adam at lr {lr} ended at {last:.10}, Newton-CG's minimum is {best:.10}"),
            ));
        }
    }
    Ok(())
}
