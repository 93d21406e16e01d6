//! The fuzz targets' inputs as ordinary tests: every file of `fuzz/corpus/<target>/`
//! (the minimised corpus that cargo-fuzz grew) and of `fuzz/regressions/<target>/`
//! (inputs that once crashed a loader) goes through the same entry point as the fuzz
//! target, plus random bytes from proptest. A panic fails the test.

#[path = "../../fuzz/entry.rs"]
mod fuzzing;
use proptest::prelude::*;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{} panicked", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn csv_corpus() {
    assert!(replay("csv", fuzzing::csv) >= 4);
}

#[test]
fn idx_corpus() {
    assert!(replay("idx", fuzzing::idx) >= 3);
}

#[test]
fn checkpoint_corpus() {
    assert!(replay("checkpoint", fuzzing::checkpoint) >= 1);
}

#[test]
fn explain_corpus() {
    assert!(replay("explain", fuzzing::explain) >= 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::csv(&bytes);
        fuzzing::idx(&bytes);
        fuzzing::checkpoint(&bytes);
        fuzzing::explain(&bytes);
        fuzzing::text(&bytes);
    }

    #[test]
    fn random_text_never_panics(text in "[-+*/^(),.0-9a-z ]{0,80}") {
        fuzzing::explain(text.as_bytes());
        fuzzing::csv(text.as_bytes());
        let mut sized = vec![3u8, 4];
        sized.extend(text.as_bytes());
        fuzzing::text(&sized);
    }
}
