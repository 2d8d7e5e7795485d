//! Benchmarks only: see `benches/verify.rs`. Run with `make bench`.
#![forbid(unsafe_code)]
