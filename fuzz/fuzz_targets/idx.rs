//! The MNIST IDX loader on arbitrary bytes, raw and behind gzip.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chainrule::fuzzing::idx(data);
});
