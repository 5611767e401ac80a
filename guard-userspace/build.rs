//! Builds the eBPF object and embeds it, or embeds an empty stub.
//!
//! `GUARD_EBPF=build` (set by every `cargo xtask` command that builds) compiles `guard-ebpf`
//! for the BPF target with Debian's compiler through the rustup toolchain `guard-bpf`, and
//! fails the build if that fails. Without it, an empty stub is embedded so a plain
//! `cargo build`/`cargo clippy`/`cargo test` works where the eBPF toolchain is absent; such a
//! binary refuses to load programs and says how to build the real one.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

/// Keep in sync with `xtask/src/setup.rs`.
const TOOLCHAIN: &str = "guard-bpf";

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=GUARD_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("guard-ebpf");
    if env::var("GUARD_EBPF").as_deref() == Ok("build") {
        let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
        let workspace = manifest.parent().context("no workspace dir")?;
        let ebpf_dir = workspace.join("guard-ebpf");
        // aya_build watches guard-ebpf; the shared types live beside it.
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join("guard-common").display()
        );
        // The eBPF sub-build compiles `core` from Debian's rust-web-src: that needs
        // -Z build-std, which Debian's stable compiler allows only with RUSTC_BOOTSTRAP.
        // It is set here, for the sub-build only, not for the workspace.
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
        let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "guard-ebpf",
                root_dir,
                ..Default::default()
            }],
            aya_build::Toolchain::Custom(TOOLCHAIN),
        )
        .context(
            "building the eBPF object failed; run `cargo xtask setup` to install the toolchain",
        )?;
        let size = fs::metadata(&object).map(|m| m.len()).unwrap_or(0);
        anyhow::ensure!(
            size > 0,
            "eBPF build produced no object at {}",
            object.display()
        );
    } else {
        fs::write(&object, []).context("writing the stub eBPF object")?;
        println!(
            "cargo:warning=guard-ebpf not built (GUARD_EBPF unset): this guard binary cannot load \
             programs; use `cargo xtask build`"
        );
    }
    Ok(())
}
