//! Rebuild the eBPF object when bpf-linker changes (as aya-template does). A host build
//! without bpf-linker (e.g. `cargo clippy --workspace`) carries on: nothing links for BPF then.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
