//! Checkpoint loading (safetensors with the metadata JSON in its header) on arbitrary
//! bytes, then sizing and restoring a model from whatever loaded.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chainrule::fuzzing::checkpoint(data);
});
