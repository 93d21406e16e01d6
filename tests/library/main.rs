//! The library's integration tests, linked as one binary: each module is one topic.

mod dependencies;
mod engine;
mod fuzz_corpus;
mod nan_policy;
mod sizes;
