//! Overflowing shapes and sizes at every public constructor, reshape, product and loader:
//! each must answer with an error. An unchecked product panics in a debug build and
//! wraps in a release build (where a wrapped size can pass a plain comparison), so
//! `.ci/run` runs this file in both profiles.

use chainrule::data::parse_idx;
use chainrule::nn::{Embedding, Init, Linear, Mlp, ParamStore, Recurrent};
use chainrule::tensor::{MAX_ELEMENTS, broadcast_shapes, checked_len};
use chainrule::{Error, Tape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Shapes whose element count does not fit: products that wrap to 0 or to a small
/// number in `usize`, one dimension past the limit, and huge dimensions beside a zero
/// (which hold no elements, but whose other products would overflow in kernels).
fn overflowing() -> Vec<Vec<usize>> {
    vec![
        vec![1 << 32, 1 << 32],
        vec![1 << 33, 1 << 31, 4],
        vec![usize::MAX, 2],
        vec![usize::MAX / 3 + 1, 3],
        vec![MAX_ELEMENTS + 1],
        vec![usize::MAX],
        vec![0, 1 << 40, 1 << 40],
        vec![1 << 62, 0, 4],
    ]
}

fn is_size_error<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(Error::TooLarge { .. }) | Err(Error::Parse { .. }) | Err(Error::Invalid { .. }) => {}
        Err(Error::Shape { .. }) => {}
        other => panic!("{what}: expected a size error, got {other:?}"),
    }
}

fn too_large<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(e @ Error::TooLarge { .. }) => {
            let line = e.to_string();
            assert!(
                line.contains("more elements") && !line.contains('\n'),
                "{what}: {line}"
            );
        }
        other => panic!("{what}: expected Error::TooLarge, got {other:?}"),
    }
}

#[test]
fn constructors_refuse_shapes_that_overflow() {
    for s in overflowing() {
        let w = format!("{s:?}");
        too_large(checked_len("test", &s), &w);
        too_large(
            Tensor::<f32>::from_vec(vec![], &s),
            &format!("from_vec {w}"),
        );
        too_large(Tensor::<f64>::zeros(&s), &format!("zeros {w}"));
        too_large(Tensor::<f32>::ones(&s), &format!("ones {w}"));
        too_large(Tensor::<f64>::full(&s, 2.0), &format!("full {w}"));
        too_large(Tensor::<f32>::randn(&s, 0), &format!("randn {w}"));
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        too_large(
            Tensor::<f32>::randn_with(&s, &mut rng),
            &format!("randn_with {w}"),
        );
        too_large(
            Tensor::<f64>::rand_uniform(&s, -1.0, 1.0, 0),
            &format!("rand_uniform {w}"),
        );
        too_large(
            Tensor::<f32>::rand_uniform_with(&s, -1.0, 1.0, &mut rng),
            &format!("rand_uniform_with {w}"),
        );
        too_large(
            Tensor::<f32>::splitmix_uniform(&s, 1, -1.0, 1.0),
            &format!("splitmix_uniform {w}"),
        );
        // a reshape of an empty tensor to a shape whose product wraps to 0
        let empty = Tensor::<f32>::zeros(&[0]).unwrap();
        too_large(empty.reshape(&s), &format!("reshape {w}"));
    }
    too_large(Tensor::<f32>::arange(usize::MAX), "arange");
    too_large(Tensor::<f32>::arange(MAX_ELEMENTS + 1), "arange");
    // the limit itself is a valid count (nothing is allocated for it here)
    assert_eq!(checked_len("test", &[MAX_ELEMENTS]).unwrap(), MAX_ELEMENTS);
    assert_eq!(checked_len("test", &[0, MAX_ELEMENTS]).unwrap(), 0);
}

#[test]
fn ops_refuse_results_that_overflow() {
    // empty operands of valid shapes whose results would not be
    let a = Tensor::<f64>::zeros(&[0, 1 << 40, 1]).unwrap();
    let b = Tensor::<f64>::zeros(&[0, 1, 1 << 40]).unwrap();
    too_large(
        broadcast_shapes("test", a.shape(), b.shape()),
        "broadcast_shapes",
    );
    too_large(a.add(&b), "add");
    too_large(a.mul(&b), "mul");
    too_large(a.broadcast_to(&[0, 1 << 40, 1 << 40]), "broadcast_to");

    let m = Tensor::<f32>::zeros(&[1 << 40, 0]).unwrap();
    let n = Tensor::<f32>::zeros(&[0, 1 << 40]).unwrap();
    too_large(m.matmul(&n), "matmul");
    too_large(m.matmul_transposed(&m, false, true), "matmul_transposed");
    let batched = Tensor::<f32>::zeros(&[1 << 20, 1 << 20, 0]).unwrap();
    let rhs = Tensor::<f32>::zeros(&[0, 1 << 30]).unwrap();
    too_large(batched.matmul(&rhs), "batched matmul");

    let half = Tensor::<f32>::zeros(&[0, MAX_ELEMENTS / 2 + 1]).unwrap();
    too_large(Tensor::concat(&[half.clone(), half.clone()], 1), "concat");
    let wide = Tensor::<f32>::zeros(&[0, usize::MAX / 2 + 1]);
    assert!(wide.is_err(), "a dimension past the limit");

    // narrow's range end overflows
    let x = Tensor::<f32>::zeros(&[2, 3]).unwrap();
    is_size_error(x.narrow(1, usize::MAX, 2), "narrow");

    // the same ops recorded on a tape
    let tape = Tape::<f32>::new();
    let (va, vb) = (tape.var(m.clone()), tape.var(n.clone()));
    too_large(va.matmul(vb), "Var::matmul");
    let (pa, pb) = (
        tape.var(Tensor::zeros(&[0, 1 << 40, 1]).unwrap()),
        tape.var(Tensor::zeros(&[0, 1, 1 << 40]).unwrap()),
    );
    too_large(pa.add(pb), "Var::add");
    too_large(pa.reshape(&[1 << 32, 1 << 32]), "Var::reshape");

    // a recorded sweep's index_select adjoint: a [2⁵⁹, 16] selection from an empty table
    let tape = Tape::<f64>::new();
    let table = tape.var(Tensor::zeros(&[1 << 59, 0]).unwrap());
    let rows = table.index_select(0, &[0; 16]).unwrap().sum_all();
    too_large(
        tape.backward_recorded(rows, &[table]),
        "recorded index_select",
    );
    // a Jacobian of shape f(x).shape ++ x.shape: [16, 2⁵⁹, 0] (jacfwd, one column per
    // input element, has none to take the output's shape from here)
    let x = Tensor::<f64>::zeros(&[1 << 59, 0]).unwrap();
    fn sixteen<'t>(
        t: &'t Tape<f64>,
        v: chainrule::Var<'t, f64>,
    ) -> chainrule::Result<chainrule::Var<'t, f64>> {
        t.constant(Tensor::ones(&[16])?).add(v.sum_all())
    }
    too_large(chainrule::autodiff::jacrev(sixteen, &x), "jacrev");
}

#[test]
fn layers_refuse_sizes_that_overflow() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut store = ParamStore::<f32>::new();
    too_large(
        Linear::new(&mut store, "l", 1 << 32, 1 << 32, Init::HeUniform, &mut rng),
        "Linear",
    );
    too_large(
        Embedding::new(&mut store, "e", usize::MAX, 2, &mut rng),
        "Embedding",
    );
    is_size_error(
        Mlp::new(
            &mut store,
            &[1 << 32, 1 << 32, 10],
            chainrule::nn::Activation::Relu,
            Init::HeUniform,
            &mut chainrule::nn::rng(0),
        ),
        "Mlp",
    );
    is_size_error(
        Recurrent::new(
            &mut store,
            chainrule::autodiff::CellKind::Lstm,
            "",
            1 << 32,
            1 << 32,
            1,
            &mut chainrule::nn::rng(0),
        ),
        "Recurrent",
    );
}

/// An IDX header: unsigned bytes, the given dimensions.
fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

#[test]
fn loaders_refuse_headers_that_overflow_or_hold_nothing() {
    // u32::MAX^3 overflows a 64-bit product; u32::MAX^2 does not, but is not the length
    for dims in [
        vec![u32::MAX, u32::MAX, u32::MAX],
        vec![u32::MAX, u32::MAX],
        vec![65536, 65536, 0],
        vec![0],
        vec![3, 0, 28],
    ] {
        let r = parse_idx(idx(&dims, &[]), "test.idx");
        assert!(matches!(r, Err(Error::Parse { .. })), "{dims:?}: {r:?}");
    }
    assert!(parse_idx(idx(&[2, 2], &[1, 2, 3, 4]), "ok.idx").is_ok());
}
