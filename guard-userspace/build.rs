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
        // aya-build relays every line of the nested cargo build as a `cargo:warning`: hundreds
        // of "Compiling ..." lines on a fresh machine. They go to a log file instead; the
        // instructions for cargo among them are passed on, and a failure points to the log.
        let log = out_dir.join("ebpf-build.log");
        let built = with_stdout_to(&log, || {
            aya_build::build_ebpf(
                [aya_build::Package {
                    name: "guard-ebpf",
                    root_dir,
                    ..Default::default()
                }],
                aya_build::Toolchain::Custom(TOOLCHAIN),
            )
        })?;
        let relayed = fs::read_to_string(&log).unwrap_or_default();
        for line in relayed.lines() {
            if line.starts_with("cargo:") && !line.starts_with("cargo:warning=") {
                println!("{line}");
            }
        }
        if let Err(err) = built {
            let tail: Vec<&str> = relayed.lines().rev().take(30).collect();
            for line in tail.into_iter().rev() {
                println!(
                    "cargo:warning={}",
                    line.trim_start_matches("cargo:warning=")
                );
            }
            return Err(err).context(format!(
                "building the eBPF object failed (full log: {}); run `cargo xtask setup` to install the toolchain",
                log.display()
            ));
        }
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
    build_info(&object)?;
    Ok(())
}

/// What `guard --version` and `guard_build_info` say of this build: the git commit (from
/// the checkout, `unknown` outside one), the build date (`SOURCE_DATE_EPOCH` when set, for
/// reproducible builds) and the sha256 of the embedded eBPF object.
fn build_info(object: &std::path::Path) -> Result<()> {
    use sha2::Digest as _;
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let workspace = manifest.parent().context("no workspace dir")?;
    let git = workspace.join(".git");
    for watched in ["HEAD", "refs/heads", "packed-refs"] {
        if git.join(watched).exists() {
            println!("cargo:rerun-if-changed={}", git.join(watched).display());
        }
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(workspace)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let secs = env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let bytes = fs::read(object).unwrap_or_default();
    let sha = if bytes.is_empty() {
        "none".to_owned()
    } else {
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    println!("cargo:rustc-env=GUARD_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=GUARD_BUILD_DATE={}",
        civil_date(secs / 86_400)
    );
    println!("cargo:rustc-env=GUARD_EBPF_SHA256={sha}");
    Ok(())
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Runs `f` with this process's stdout (where build scripts talk to cargo) sent to `log`.
fn with_stdout_to<T>(log: &std::path::Path, f: impl FnOnce() -> T) -> Result<T> {
    use std::{io::Write as _, os::fd::AsRawFd as _};
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    std::io::stdout().flush()?;
    // SAFETY: plain fd juggling on fds this process owns; stdout is restored before return.
    let saved = unsafe { libc::dup(1) };
    anyhow::ensure!(saved >= 0, "dup(stdout) failed");
    // SAFETY: as above.
    unsafe { libc::dup2(file.as_raw_fd(), 1) };
    let out = f();
    let _ = std::io::stdout().flush();
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    Ok(out)
}
