//! Installs the eBPF toolchain the way `shared/TOOLCHAIN.md` verified it on Debian 12:
//! Debian's rustc-web + rust-web-src (a compiler and the library source it can build with
//! `-Z build-std=core`), bpf-linker built against Debian's LLVM 22, and a rustup toolchain
//! named [`TOOLCHAIN`] linked to `/usr` so `aya_build` can run `rustup run guard-bpf cargo`.
//!
//! Each piece is checked first, so a machine that has everything pays a few process spawns.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::step;

/// The rustup toolchain name guard-userspace's build script passes to `aya_build`.
/// Keep in sync with `guard-userspace/build.rs`.
pub const TOOLCHAIN: &str = "guard-bpf";

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// What the caller is about to do, and so what must be present.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Build,
    Test,
    Bench,
}

const BUILD_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev"];
/// `ip` and `tc` for network namespaces, veth pairs and the RTT-anomaly test's rate limit,
/// `bpftool` to inspect cgroup attachments, `prometheus` for `promtool check metrics`,
/// nftables and iptables for the doctor's firewall checks, nginx as a real reverse proxy in
/// the HTTP-context tests (started by the tests in a namespace, never as a host service),
/// lintian for the package test.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "prometheus",
    "nftables",
    "iptables",
    "nginx-light",
    "lintian",
];
/// The peer (xdp-filter) and the tool that runs it under BPF_PROG_TEST_RUN.
const BENCH_PACKAGES: &[&str] = &["iproute2", "bpftool", "xdp-tools"];

pub fn ensure(needs: Needs) -> Result<()> {
    let started = Instant::now();
    let mut packages: Vec<&str> = BUILD_PACKAGES.to_vec();
    match needs {
        Needs::Build => {}
        Needs::Test => packages.extend(TEST_PACKAGES),
        Needs::Bench => packages.extend(BENCH_PACKAGES),
    }
    ensure_packages(&packages)?;
    ensure_bpf_linker()?;
    ensure_toolchain_link()?;
    step(&format!(
        "toolchain ready ({:.1}s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages: {}; install them as root: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    // Packages that ship a service (prometheus, nginx) must not start it on this host: the
    // tests run what they need themselves. Debian's policy-rc.d hook (exit 101: "action
    // forbidden") holds every service start for the length of the install.
    let _no_services = NoServiceStarts::hold();
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let ok = install().is_ok_and(|s| s.success());
    if !ok {
        // A fresh machine has no package lists yet: fetch them once and try again.
        step("apt-get install failed; running apt-get update and retrying");
        let updated = Command::new("apt-get")
            .args(["update", "-q"])
            .status()
            .context("failed to run apt-get update")?;
        if !updated.success() || !install().is_ok_and(|s| s.success()) {
            bail!(
                "could not install Debian packages {} (see apt-get's output above)",
                missing.join(" ")
            );
        }
    }
    let still: Vec<&str> = missing.iter().copied().filter(|p| !installed(p)).collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these packages are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// `/usr/sbin/policy-rc.d` answering "forbidden" while it lives, unless the machine already
/// has one (which then decides).
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn hold() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Self(None);
        }
        let written = std::fs::write(
            &path,
            "#!/bin/sh\n# cargo xtask: no service starts during its apt-get install\nexit 101\n",
        )
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)));
        Self(written.is_ok().then_some(path))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn cargo_bin_dir() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

fn ensure_bpf_linker() -> Result<()> {
    let linker = cargo_bin_dir().join("bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(());
    }
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} for LLVM 22 from crates.io (about a minute)"
    ));
    // bpf-linker's build script finds LLVM through llvm-config on PATH.
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path)
        .status()
        .context("failed to run cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "cargo install bpf-linker {BPF_LINKER_VERSION} (features llvm-22) failed; it needs \
             Debian's llvm-22-dev and {LLVM_BIN}/llvm-config"
        );
    }
    Ok(())
}

fn ensure_toolchain_link() -> Result<()> {
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup is needed to run the eBPF sub-build (`rustup run guard-bpf cargo`)")?;
    let linked = String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(TOOLCHAIN));
    if !linked {
        step(&format!(
            "linking rustup toolchain {TOOLCHAIN} to Debian's compiler in /usr"
        ));
        let status = Command::new("rustup")
            .args(["toolchain", "link", TOOLCHAIN, "/usr"])
            .status()
            .context("failed to run rustup toolchain link")?;
        if !status.success() {
            bail!("rustup toolchain link {TOOLCHAIN} /usr failed");
        }
    }
    let core_src = Path::new("/usr/lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core_src.exists() {
        bail!(
            "{} is missing: the rust-web-src package should provide it",
            core_src.display()
        );
    }
    Ok(())
}
