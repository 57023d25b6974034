#![no_std]
// Intentionally empty: the programs are the `guard` binary (src/main.rs); this target only
// lets host tooling (clippy, rust-analyzer) see the crate (aya-template layout).
