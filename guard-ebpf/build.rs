//! Rebuild the programs when the `bpf-linker` binary changes: building this crate has an
//! undeclared dependency on it (the aya-template does the same, for the same reason).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        // Only the BPF target needs the linker; host builds (clippy of the workspace) do not.
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
