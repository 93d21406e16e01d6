//! Checkpoint loading (safetensors with the metadata JSON in its header) on arbitrary
//! bytes, then sizing and restoring a model from whatever loaded.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target calls one entry point of the shared file
#[path = "../entry.rs"]
mod entry;

fuzz_target!(|data: &[u8]| {
    entry::checkpoint(data);
});
