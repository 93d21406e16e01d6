//! Integration tests of the engine through the public API.

use chainrule::{Tape, Tensor, Var};

#[test]
fn a_million_op_chain_backpropagates_without_recursion() {
    let tape = Tape::<f32>::with_capacity(1_000_001);
    let x = tape.var(Tensor::scalar(1.0));
    let mut y = x;
    for _ in 0..1_000_000 {
        y = y.add_scalar(1e-6);
    }
    let g = tape.backward(y).unwrap();
    assert_eq!(g[x].item().unwrap(), 1.0);
    assert_eq!(tape.len(), 1_000_001);
}

#[test]
fn shape_errors_name_the_op_and_both_shapes() {
    let tape = Tape::<f64>::new();
    let a = tape.var(Tensor::zeros(&[2, 3]).unwrap());
    let b = tape.var(Tensor::zeros(&[4, 5]).unwrap());
    let msg = |e: chainrule::Error| e.to_string();
    let add = msg(a.add(b).unwrap_err());
    assert!(
        add.contains("add") && add.contains("[2, 3]") && add.contains("[4, 5]"),
        "{add}"
    );
    let mm = msg(a.matmul(b).unwrap_err());
    assert!(
        mm.contains("matmul") && mm.contains("[2, 3]") && mm.contains("[4, 5]"),
        "{mm}"
    );
    let rs = msg(a.reshape(&[5]).unwrap_err());
    assert!(
        rs.contains("reshape") && rs.contains("[2, 3]") && rs.contains("[5]"),
        "{rs}"
    );
    let cat = msg(Var::concat(&[a, b], 0).unwrap_err());
    assert!(
        cat.contains("concat") && cat.contains("[2, 3]") && cat.contains("[4, 5]"),
        "{cat}"
    );
}

#[test]
fn backward_needs_a_scalar_and_says_so() {
    let tape = Tape::<f32>::new();
    let x = tape.var(Tensor::ones(&[3]).unwrap());
    let e = tape.backward(x.exp()).unwrap_err().to_string();
    assert!(e.contains("backward") && e.contains("[3]"), "{e}");
}

#[test]
fn cleared_tape_starts_empty_and_gradients_do_not_leak_across_steps() {
    let mut tape = Tape::<f64>::new();
    let w = Tensor::<f64>::from_vec(vec![2.0], &[1]).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        tape.clear();
        let v = tape.var(w.clone());
        let loss = (v * v).sum_all();
        seen.push(tape.backward(loss).unwrap()[v].item().unwrap());
        assert_eq!(tape.len(), 3);
    }
    assert_eq!(seen, vec![4.0, 4.0, 4.0]);
}

#[test]
fn same_seed_same_result() {
    // Sizes above the parallel thresholds, so the multi-threaded paths run: the forward
    // matmul and both backward products are 300·300·200 = 18M multiply-adds (threshold
    // 8M), and sin / its backward cover 90,000 elements (threshold 65,536), as does the
    // broadcast add of a [300] row to [300, 300].
    let run = || {
        let tape = Tape::<f32>::new();
        let x = tape.var(Tensor::randn(&[300, 300], 42).unwrap());
        let r = tape.var(Tensor::randn(&[300], 44).unwrap());
        let w = tape.var(Tensor::randn(&[300, 200], 43).unwrap());
        let h = x.sin().add(r).unwrap();
        let y = h.matmul(w).unwrap().tanh().sum_all();
        let g = tape.backward(y).unwrap();
        (
            y.item().unwrap().to_bits(),
            g[w].to_vec(),
            g[x].to_vec(),
            g[r].to_vec(),
        )
    };
    let (a, b) = (run(), run());
    assert_eq!(a.1.len(), 300 * 200);
    assert_eq!(a.2.len(), 300 * 300);
    assert!(a.1.iter().chain(&a.2).chain(&a.3).all(|v| v.is_finite()));
    // bit-identical (compared as bits so that even a NaN would have to match)
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(a.0, b.0);
    assert_eq!(bits(&a.1), bits(&b.1));
    assert_eq!(bits(&a.2), bits(&b.2));
    assert_eq!(bits(&a.3), bits(&b.3));
}

#[test]
fn anomaly_mode_names_the_op_that_produced_nan() {
    let tape = Tape::<f64>::new();
    tape.set_detect_anomaly(true);
    let x = tape.var(Tensor::from_vec(vec![0.0, 1.0], &[2]).unwrap());
    let w = tape.var(Tensor::from_vec(vec![2.0, 3.0], &[2]).unwrap());
    let y = x.mul(w).unwrap().sqrt().sum_all();
    let e = tape.backward(y).unwrap_err().to_string();
    assert!(
        e.contains("node 3 (sqrt)") && e.contains("[2] in [0.0000e0, 3.0000e0]"),
        "{e}"
    );
    // without anomaly mode the same sweep returns the infinite gradient
    tape.set_detect_anomaly(false);
    let g = tape.backward(y).unwrap();
    assert!(g[x].data()[0].is_infinite());
}

#[test]
fn exported_graph_groups_nodes_by_scope() {
    let tape = Tape::<f32>::new();
    let x = tape.constant(Tensor::ones(&[2, 3]).unwrap());
    let w = tape.var(Tensor::ones(&[3, 4]).unwrap());
    tape.set_label(w, "layer0.weight");
    let h = tape.scoped("layer0", || x.matmul(w).unwrap().relu());
    let loss = tape.scoped("loss", || h.sum_all());
    let g = tape.backward_keep_all(loss).unwrap();
    let dot = chainrule::autodiff::graph_dot(&tape, Some(&g));
    assert!(
        dot.contains("label=\"layer0\"") && dot.contains("label=\"loss\""),
        "{dot}"
    );
    assert!(
        dot.contains("leaf layer0.weight") && dot.contains("|grad|"),
        "{dot}"
    );
    assert_eq!(dot.matches("->").count(), 4);
}

#[test]
fn variables_of_another_tape_are_errors_not_other_nodes() {
    use chainrule::{Error, Var};
    let (a, b) = (Tape::<f64>::new(), Tape::<f64>::new());
    let x = a.var(Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap());
    let y = b.var(Tensor::from_vec(vec![3.0, 4.0], &[2]).unwrap());
    // combining them in an op
    let other = |r: chainrule::Result<Var<'_, f64>>| matches!(r, Err(Error::OtherTape { .. }));
    assert!(other(x.add(y)));
    assert!(other(x.matmul(y)));
    assert!(other(Var::concat(&[x, y], 0)));
    // reading one tape's variable from another's gradients: y's id is 0, as is x's
    let g = b.backward(y.mul(y).unwrap().sum_all()).unwrap();
    assert!(matches!(g.get(x), Err(Error::OtherTape { .. })));
    assert!(g.wrt(x).is_err());
    assert_eq!(g.wrt(y).unwrap().data(), &[6.0, 8.0]);
    let e = g.get(x).unwrap_err().to_string();
    assert!(e.contains("belongs to another tape"), "{e}");
    // sweeping one tape from another's output, or towards another's variables
    assert!(matches!(
        a.backward(y.sum_all()),
        Err(Error::OtherTape { .. })
    ));
    let out = x.sum_all();
    assert!(matches!(
        b.backward_recorded(out, &[x]),
        Err(Error::OtherTape { .. })
    ));
    assert!(matches!(
        a.backward_recorded(out, &[y]),
        Err(Error::OtherTape { .. })
    ));
    // gradients from before a clear do not answer for the variables recorded after it
    let mut c = Tape::<f64>::new();
    let g = {
        let z = c.var(Tensor::from_vec(vec![5.0], &[1]).unwrap());
        c.backward(z.sum_all()).unwrap()
    };
    c.clear();
    let z2 = c.var(Tensor::from_vec(vec![7.0], &[1]).unwrap());
    assert!(matches!(g.get(z2), Err(Error::OtherTape { .. })));
}

#[test]
fn errors_are_structured_and_print_one_line() {
    use chainrule::Error;
    use chainrule::data::{LabelColumn, parse_csv};
    let e = parse_csv(b"a,y\n1,0\nx,1\n", "bad.csv", &LabelColumn::Last).unwrap_err();
    match &e {
        Error::Parse { path, line, msg } => {
            assert_eq!((path.as_str(), *line), ("bad.csv", Some(3)));
            assert!(msg.contains("'x' is not a number"), "{msg}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "bad.csv: row 3, column 0 ('a'): 'x' is not a number"
    );
    let a = Tensor::<f64>::zeros(&[2, 3]).unwrap();
    let b = Tensor::<f64>::zeros(&[4]).unwrap();
    match a.add(&b).unwrap_err() {
        Error::Shape { op, lhs, rhs, .. } => {
            assert_eq!((op, lhs.0, rhs.0), ("add", vec![2, 3], vec![4]));
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    match chainrule::data::load_mnist(std::path::Path::new("/no/such/folder")).unwrap_err() {
        e @ Error::Parse { .. } | e @ Error::Io { .. } => {
            assert!(e.to_string().starts_with("/no/such/folder"), "{e}")
        }
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn reductions_of_empty_tensors_do_not_panic() {
    for shape in [vec![3, 0], vec![0, 3], vec![2, 0, 4], vec![0]] {
        let x = Tensor::<f64>::zeros(&shape).unwrap();
        for axis in 0..shape.len() {
            let s = x.sum(&[axis], false).unwrap();
            assert!(
                s.data().iter().all(|&v| v == 0.0),
                "{shape:?} sum over {axis}"
            );
            let _ = x.mean(&[axis], true).unwrap();
            let _ = x.max(&[axis], false).unwrap();
            let _ = x.softmax(axis).unwrap();
        }
        let tape = Tape::<f64>::new();
        let v = tape.var(x.clone());
        let g = tape.backward(v.sum_all()).unwrap();
        assert_eq!(g.wrt(v).unwrap().shape(), x.shape());
    }
}
