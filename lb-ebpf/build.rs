//! Reruns the build when bpf-linker changes: the object depends on it.
use std::path::Path;

fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // The host build of this crate (e.g. `cargo check --workspace`) only needs to type-check.
    let _ = Path::new(".");
}
