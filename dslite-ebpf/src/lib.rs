#![no_std]
// Empty: the programs are the `dslite` binary (src/main.rs). The library target only exists
// so that host tooling (cargo check/clippy over the workspace) has something to look at.
