//! `chainrule explain`'s parser and walk on arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chainrule::fuzzing::explain(data);
});
