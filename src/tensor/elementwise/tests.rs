//! Tests of the elementwise kernels: known values, broadcasting and its errors, the
//! tiled tangents of repeating operands, masks and `where`, the parallel path.

use super::*;

fn t(data: &[f64], shape: &[usize]) -> Tensor<f64> {
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

#[test]
fn known_values() {
    let x = t(&[-1.0, 0.0, 2.0], &[3]);
    assert_eq!(x.relu().data(), &[0.0, 0.0, 2.0]);
    assert_eq!(x.abs().data(), &[1.0, 0.0, 2.0]);
    assert_eq!(x.exp().data(), &[(-1f64).exp(), 1.0, 2f64.exp()]);
    assert_eq!(x.sigmoid().data()[1], 0.5);
    assert_eq!(x.clamp(-0.5, 1.0).data(), &[-0.5, 0.0, 1.0]);
    assert_eq!(x.powf(2.0).data(), &[1.0, 0.0, 4.0]);
    assert_eq!(t(&[4.0], &[1]).sqrt().data(), &[2.0]);
    assert_eq!(t(&[1.0], &[1]).ln().data(), &[0.0]);
    assert_eq!(t(&[0.0], &[1]).tanh().data(), &[0.0]);
    assert_eq!(t(&[0.0], &[1]).cos().data(), &[1.0]);
    assert_eq!(t(&[0.0], &[1]).sin().data(), &[0.0]);
    // sigmoid must not overflow far from 0
    let s = t(&[-1000.0, 1000.0], &[2]).sigmoid();
    assert_eq!(s.data(), &[0.0, 1.0]);
}

/// Tangents of operands that repeat along leading axes (read tiled, chunk by chunk)
/// equal those of the same operands broadcast out in full, for periods below, at and
/// above the chunk length, and for operands broadcast in the middle (the general path).
#[test]
fn tangents_of_repeating_operands_equal_their_full_broadcasts() {
    let cases: [(&[usize], &[usize]); 6] = [
        (&[4, 3, 5], &[3, 5]),
        (&[4, 3, 5], &[1, 5]),
        (&[7, 300], &[300]),
        (&[3, 2000], &[2000]),
        (&[3, 2000], &[1]),
        (&[4, 3, 5], &[4, 1, 5]),
    ];
    for (k, (full, part)) in cases.into_iter().enumerate() {
        let seed = 10 * k as u64;
        let (a, ta) = (
            Tensor::<f64>::randn(full, seed).unwrap(),
            Tensor::randn(full, seed + 1).unwrap(),
        );
        let (b, tb) = (
            Tensor::randn(part, seed + 2).unwrap(),
            Tensor::randn(part, seed + 3).unwrap(),
        );
        let (bf, tbf) = (
            b.broadcast_to(full).unwrap(),
            tb.broadcast_to(full).unwrap(),
        );
        for op in [BinaryOp::Mul, BinaryOp::Div, BinaryOp::Sub] {
            let y = op.apply(&a, &b).unwrap();
            for (p, q) in [(Some(&ta), Some(&tb)), (None, Some(&tb)), (Some(&ta), None)] {
                let qf = q.map(|_| &tbf);
                // the repeating operand on the left
                let left = op.tangent(&b, &a, &op.apply(&b, &a).unwrap(), q, p);
                let left_full = op.tangent(&bf, &a, &op.apply(&bf, &a).unwrap(), qf, p);
                assert_eq!(left.data(), left_full.data(), "{op:?} {full:?} {part:?}");
                let right = op.tangent(&a, &b, &y, p, q);
                let right_full = op.tangent(&a, &bf, &y, p, qf);
                assert_eq!(right.data(), right_full.data(), "{op:?} {full:?} {part:?}");
            }
        }
    }
}

#[test]
fn broadcasting_binary() {
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let b = t(&[10., 20., 30.], &[3]);
    assert_eq!(a.add(&b).unwrap().data(), &[11., 22., 33., 14., 25., 36.]);
    let col = t(&[1., 2.], &[2, 1]);
    assert_eq!(a.mul(&col).unwrap().data(), &[1., 2., 3., 8., 10., 12.]);
    assert_eq!(col.sub(&b).unwrap().shape(), &[2, 3]);
    assert_eq!(a.div(&t(&[2.0], &[])).unwrap().data()[5], 3.0);
    assert_eq!(
        a.maximum(&t(&[3.5], &[1])).unwrap().data(),
        &[3.5, 3.5, 3.5, 4., 5., 6.]
    );
    assert_eq!(
        a.minimum(&t(&[3.5], &[1])).unwrap().data(),
        &[1., 2., 3., 3.5, 3.5, 3.5]
    );
    assert_eq!(
        t(&[2.0], &[1]).pow(&t(&[3.0], &[1])).unwrap().data(),
        &[8.0]
    );
}

#[test]
fn add_shape_error_names_op_and_shapes() {
    let e = t(&[1., 2.], &[2])
        .add(&t(&[1., 2., 3.], &[3]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("add") && e.contains("[2]") && e.contains("[3]"),
        "{e}"
    );
}

#[test]
fn masks_and_where() {
    let a = t(&[1., 5., 3.], &[3]);
    let b = t(&[2., 2., 3.], &[3]);
    assert_eq!(a.gt(&b).unwrap().data(), &[0., 1., 0.]);
    assert_eq!(a.ge(&b).unwrap().data(), &[0., 1., 1.]);
    assert_eq!(a.lt(&b).unwrap().data(), &[1., 0., 0.]);
    assert_eq!(a.le(&b).unwrap().data(), &[1., 0., 1.]);
    assert_eq!(a.eq_mask(&b).unwrap().data(), &[0., 0., 1.]);
    assert_eq!(a.ne_mask(&b).unwrap().data(), &[1., 1., 0.]);
    let m = a.gt(&b).unwrap();
    assert_eq!(Tensor::where_(&m, &a, &b).unwrap().data(), &[2., 5., 3.]);
}

#[test]
fn parallel_path_matches_serial() {
    use crate::tensor::Element;
    let n = PARALLEL_MIN_LEN * 3 + 7;
    let x = Tensor::<f32>::from_vec((0..n).map(|i| (i as f32) * 1e-4).collect(), &[n]).unwrap();
    let y = x.tanh();
    for i in [0, 1, n / 2, n - 1] {
        assert_eq!(y.data()[i], x.data()[i].tanh_());
    }
    // the whole output against a serial, element-by-element reference
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let serial: Vec<f32> = x.data().iter().map(|v| v.tanh_()).collect();
    assert_eq!(y.len(), n);
    assert_eq!(bits(y.data()), bits(&serial));
    let s = x.sin();
    let serial: Vec<f32> = x.data().iter().map(|v| v.sin()).collect();
    assert_eq!(bits(s.data()), bits(&serial));
    // same-shape binary ops (chunked in parallel)
    let b = Tensor::<f32>::from_vec(
        (0..n)
            .map(|i| 0.5 + ((i * 7919) % 1000) as f32 * 1e-3)
            .collect(),
        &[n],
    )
    .unwrap();
    let serial: Vec<f32> = x.data().iter().zip(b.data()).map(|(p, q)| p / q).collect();
    assert_eq!(bits(x.div(&b).unwrap().data()), bits(&serial));
    let serial: Vec<f32> = x
        .data()
        .iter()
        .zip(b.data())
        .map(|(&p, &q)| if p >= q { p } else { q })
        .collect();
    assert_eq!(bits(x.maximum(&b).unwrap().data()), bits(&serial));
    let mut acc = x.clone();
    acc.add_assign(&b).unwrap();
    let serial: Vec<f32> = x.data().iter().zip(b.data()).map(|(p, q)| p + q).collect();
    assert_eq!(bits(acc.data()), bits(&serial));
    // large binary ops with broadcasting: a row [cols] and a column [rows, 1]
    let (rows, cols) = (300, 701);
    assert!(rows * cols > PARALLEL_MIN_LEN * 3);
    let a = Tensor::<f32>::from_vec(
        (0..rows * cols)
            .map(|i| ((i * 31) % 977) as f32 * 1e-2 - 4.0)
            .collect(),
        &[rows, cols],
    )
    .unwrap();
    let row = Tensor::<f32>::from_vec((0..cols).map(|j| j as f32 * 0.25 - 7.0).collect(), &[cols])
        .unwrap();
    let col = Tensor::<f32>::from_vec(
        (0..rows).map(|r| 1.0 + r as f32 * 0.125).collect(),
        &[rows, 1],
    )
    .unwrap();
    let sub = a.sub(&row).unwrap();
    let mul = a.mul(&col).unwrap();
    let div = row.div(&col).unwrap();
    assert_eq!(sub.shape(), &[rows, cols]);
    assert_eq!(mul.shape(), &[rows, cols]);
    assert_eq!(div.shape(), &[rows, cols]);
    for r in 0..rows {
        for j in 0..cols {
            let i = r * cols + j;
            let (av, rv, cv) = (a.data()[i], row.data()[j], col.data()[r]);
            assert_eq!(
                sub.data()[i].to_bits(),
                (av - rv).to_bits(),
                "sub at {r},{j}"
            );
            assert_eq!(
                mul.data()[i].to_bits(),
                (av * cv).to_bits(),
                "mul at {r},{j}"
            );
            assert_eq!(
                div.data()[i].to_bits(),
                (rv / cv).to_bits(),
                "div at {r},{j}"
            );
        }
    }
}

/// erf and both GELU forms against Python's `math.erf`/`math.tanh` (C's libm) in f64:
/// `x·(1 + erf(x/√2))/2` is PyTorch's `gelu`, the tanh form its `approximate="tanh"`.
#[test]
fn erf_and_gelu_match_an_independent_reference() {
    let points = [
        (
            -3.0,
            -0.9999779095030014,
            -0.00404969409489031,
            -0.0036373920817729943,
        ),
        (
            -1.0,
            -0.8427007929497149,
            -0.15865525393145707,
            -0.15880800939172324,
        ),
        (
            -0.5,
            -0.5204998778130465,
            -0.15426876936299344,
            -0.15428599017485606,
        ),
        (0.0, 0.0, 0.0, 0.0),
        (
            0.3,
            0.3286267594591274,
            0.18537342665668577,
            0.18537092354275922,
        ),
        (
            1.0,
            0.8427007929497149,
            0.8413447460685429,
            0.8411919906082768,
        ),
        (
            2.5,
            0.999593047982555,
            2.4844758366855597,
            2.484915733910001,
        ),
    ];
    for (x, erf, gelu, gelu_tanh) in points {
        for (op, want) in [
            (UnaryOp::Erf, erf),
            (UnaryOp::Gelu, gelu),
            (UnaryOp::GeluTanh, gelu_tanh),
        ] {
            let got: f64 = op.value(x);
            assert!(
                (got - want).abs() <= 1e-15 * want.abs().max(1.0),
                "{} at {x}: {got} vs {want}",
                op.name()
            );
        }
    }
    // NaN in, NaN out
    for op in [UnaryOp::Erf, UnaryOp::Gelu, UnaryOp::GeluTanh] {
        assert!(op.value(f64::NAN).is_nan(), "{}", op.name());
    }
}
