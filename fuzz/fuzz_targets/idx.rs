//! The MNIST IDX loader on arbitrary bytes, raw and behind gzip.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target calls one entry point of the shared file
#[path = "../entry.rs"]
mod entry;

fuzz_target!(|data: &[u8]| {
    entry::idx(data);
});
