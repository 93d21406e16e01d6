//! One NaN policy, PyTorch's: NaN in, NaN out. One test per row of the table in
//! docs/nan-policy.md; each fails if the op returns a number for a NaN (as `f64::max`,
//! `f64::clamp` or a plain comparison would).

use chainrule::autodiff::{GradcheckOptions, gradcheck, nan_max};
use chainrule::nn::{CharModel, ParamStore};
use chainrule::scalar::{Dual, Real};
use chainrule::{Tape, Tensor};

const NAN: f64 = f64::NAN;

fn t(v: &[f64]) -> Tensor<f64> {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

/// The same values as f32, to check both element types.
fn t32(v: &[f64]) -> Tensor<f32> {
    t(v).cast()
}

#[test]
fn relu_propagates_nan() {
    assert!(t(&[NAN]).relu().data()[0].is_nan());
    assert!(t32(&[NAN]).relu().data()[0].is_nan());
    assert_eq!(t(&[-1.0, 2.0]).relu().data(), &[0.0, 2.0]);
    let tape = Tape::<f64>::new();
    let x = tape.var(t(&[NAN, 1.0]));
    let y = x.relu();
    assert!(y.value().data()[0].is_nan());
    // the scalar engines too
    let d = Dual::new(NAN, 1.0).relu();
    assert!(d.v.is_nan() && d.d.is_nan());
}

#[test]
fn clamp_propagates_nan() {
    assert!(t(&[NAN]).clamp(-1.0, 1.0).data()[0].is_nan());
    assert!(t32(&[NAN]).clamp(-1.0, 1.0).data()[0].is_nan());
    assert_eq!(
        t(&[-3.0, 0.5, 3.0]).clamp(-1.0, 1.0).data(),
        &[-1.0, 0.5, 1.0]
    );
    // PyTorch's min(max(x, lo), hi): hi wins when lo > hi
    assert_eq!(t(&[0.0]).clamp(2.0, 1.0).data(), &[1.0]);
    // its derivative: 1 inside [lo, hi], 0 outside, 0 everywhere when lo > hi (the output
    // is the constant hi), NaN at NaN
    let grad = |x: f64, lo: f64, hi: f64| {
        let tape = Tape::<f64>::new();
        let v = tape.var(t(&[x]));
        tape.backward(v.clamp(lo, hi).sum_all())
            .unwrap()
            .wrt(v)
            .unwrap()
            .data()[0]
    };
    assert_eq!(
        (
            grad(0.5, 0.0, 1.0),
            grad(2.0, 0.0, 1.0),
            grad(-1.0, 0.0, 1.0)
        ),
        (1.0, 0.0, 0.0)
    );
    for x in [0.5, 1.5, 2.5] {
        assert_eq!(grad(x, 2.0, 1.0), 0.0, "clamp(x, 2, 1) at {x}");
    }
    assert!(grad(NAN, 0.0, 1.0).is_nan());
    let tape = Tape::<f64>::new();
    assert!(tape.var(t(&[NAN])).clamp(0.0, 1.0).value().data()[0].is_nan());
}

#[test]
fn maximum_and_minimum_propagate_nan_in_either_argument() {
    for (a, b) in [(NAN, 1.0), (1.0, NAN), (NAN, NAN)] {
        assert!(
            t(&[a]).maximum(&t(&[b])).unwrap().data()[0].is_nan(),
            "max({a}, {b})"
        );
        assert!(
            t(&[a]).minimum(&t(&[b])).unwrap().data()[0].is_nan(),
            "min({a}, {b})"
        );
        assert!(t32(&[a]).maximum(&t32(&[b])).unwrap().data()[0].is_nan());
        assert!(t32(&[a]).minimum(&t32(&[b])).unwrap().data()[0].is_nan());
        let tape = Tape::<f64>::new();
        let (x, y) = (tape.var(t(&[a])), tape.var(t(&[b])));
        assert!(x.maximum(y).unwrap().value().data()[0].is_nan());
        assert!(x.minimum(y).unwrap().value().data()[0].is_nan());
    }
    assert_eq!(
        t(&[1.0, 5.0]).maximum(&t(&[2.0, 3.0])).unwrap().data(),
        &[2.0, 5.0]
    );
}

#[test]
fn reductions_propagate_nan() {
    let x = Tensor::from_vec(vec![1.0, NAN, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    let rows = x.max(&[1], false).unwrap();
    assert!(rows.data()[0].is_nan());
    assert_eq!(rows.data()[1], 6.0);
    assert!(x.max(&[0], false).unwrap().data()[1].is_nan());
    assert!(x.sum(&[1], false).unwrap().data()[0].is_nan());
    assert!(x.mean(&[0, 1], false).unwrap().data()[0].is_nan());
    assert!(x.logsumexp(&[1], false).unwrap().data()[0].is_nan());
    // argmax ranks NaN highest (as PyTorch's argmax): the first NaN of the row
    let y = Tensor::from_vec(vec![1.0, NAN, 9.0, NAN], &[1, 4]).unwrap();
    assert_eq!(y.argmax_rows(), vec![1]);
    let z = Tensor::from_vec(vec![NAN, 2.0, 9.0], &[1, 3]).unwrap();
    assert_eq!(z.argmax_rows(), vec![0]);
}

#[test]
fn differences_used_by_checks_propagate_nan_and_infinity() {
    let a = t(&[1.0, 2.0, 3.0]);
    assert!(a.max_abs_diff(&t(&[1.0, NAN, 3.0])).unwrap().is_nan());
    assert!(t(&[NAN, 2.0, 3.0]).max_abs_diff(&a).unwrap().is_nan());
    assert!(
        a.max_abs_diff(&t(&[1.0, 2.0, f64::INFINITY]))
            .unwrap()
            .is_infinite()
    );
    // the same infinity on both sides is no agreement either: inf − inf is NaN
    let inf = t(&[f64::INFINITY]);
    assert!(inf.max_abs_diff(&inf).unwrap().is_nan());
    assert!(nan_max(1.0, NAN).is_nan() && nan_max(NAN, 1.0).is_nan());
    assert_eq!(nan_max(1.0, 2.0), 2.0);
}

#[test]
fn gradcheck_fails_on_any_non_finite_value() {
    // first order: a function whose gradient is NaN at the point (relu' at a NaN input)
    fn f<'t>(
        _: &'t Tape<f64>,
        v: &[chainrule::Var<'t, f64>],
    ) -> chainrule::Result<chainrule::Var<'t, f64>> {
        v[0].relu().mul(v[0])
    }
    let r = gradcheck(f, &[t(&[0.5, NAN])], &GradcheckOptions::default()).unwrap();
    assert!(!r.passed(1e-6), "{r:?}");
    // (the planted faults, a NaN gradient, tangent or H·v, are the program's: its
    // `planted` module checks that each fails the suite)
}

#[test]
fn sampling_from_non_finite_scores_is_an_error() {
    let mut store = ParamStore::<f32>::new();
    let model = CharModel::new(
        &mut store,
        chainrule::autodiff::CellKind::Lstm,
        5,
        3,
        4,
        1,
        &mut chainrule::nn::rng(0),
    )
    .unwrap();
    assert!(model.sample(&store, &[1], 5, 1.0, None, 0).is_ok());
    let head = store.find("out.bias").expect("the output layer's bias");
    store.get_mut(head).data_mut()[2] = f32::NAN;
    let e = model.sample(&store, &[1], 5, 1.0, None, 0).unwrap_err();
    assert!(e.to_string().contains("score of id 2"), "{e}");
    assert!(matches!(e, chainrule::Error::NonFinite(_)));
    store.get_mut(head).data_mut()[2] = f32::INFINITY;
    assert!(model.sample(&store, &[1], 5, 0.0, None, 0).is_err());
}

#[test]
fn pow_exponent_derivative_is_pytorchs_at_a_non_positive_base() {
    // ∂(aᵇ)/∂b = aᵇ·ln a; PyTorch: 0 where a = 0 and b ≥ 0, NaN where a < 0
    let grad_b = |a: f64, b: f64| {
        let tape = Tape::<f64>::new();
        let (x, y) = (tape.var(t(&[a])), tape.var(t(&[b])));
        let g = tape.backward(x.pow(y).unwrap().sum_all()).unwrap();
        g.wrt(y).unwrap().data()[0]
    };
    assert_eq!(grad_b(0.0, 2.0), 0.0);
    assert_eq!(grad_b(0.0, 0.0), 0.0);
    assert_eq!(grad_b(0.0, -1.0), f64::NEG_INFINITY);
    assert!(grad_b(-2.0, 2.0).is_nan());
    assert!(grad_b(NAN, 2.0).is_nan());
    let (a, b) = (1.5f64, 0.7f64);
    assert!((grad_b(a, b) - a.powf(b) * a.ln()).abs() < 1e-15);
}

#[test]
fn powf_with_exponent_zero_has_derivative_zero_at_zero() {
    // x⁰ = 1 everywhere: PyTorch's derivative is 0, also at x = 0 (not 0·0⁻¹ = NaN)
    let tape = Tape::<f64>::new();
    let x = tape.var(t(&[0.0, 2.0]));
    let g = tape.backward(x.powf(0.0).sum_all()).unwrap();
    assert_eq!(g.wrt(x).unwrap().data(), &[0.0, 0.0]);
    let (_, d) = chainrule::autodiff::jvp(|_, v| Ok(v.powf(0.0)), &t(&[0.0]), &t(&[1.0])).unwrap();
    assert_eq!(d.data(), &[0.0]);
}
