//! The CSV loader on arbitrary bytes, with the label column chosen by the first byte.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chainrule::fuzzing::csv(data);
});
