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
/// lintian for the package test; yamllint, ansible-core and ansible-lint for the deploy/
/// checks, and python3-venv for the offline Kubernetes schema validators ([`TEST_VENV`]).
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "prometheus",
    "nftables",
    "iptables",
    "nginx-light",
    "lintian",
    "yamllint",
    "ansible-core",
    "ansible-lint",
    "python3-venv",
];
/// `kubectl kustomize` for the Kubernetes base; Debian's package only where no kubectl is
/// installed already (another kubectl package would conflict with it).
const KUBECTL_PACKAGE: &str = "kubernetes-client";
/// The PyPI packages of the test venv, pinned: Kubernetes' schemas (strict) and the
/// Prometheus Operator's models, for `tests/tools/k8s_validate.py`.
const TEST_VENV_PACKAGES: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "cloudcoil.models.prometheus_operator==0.80.1.0",
    "PyYAML==6.0.3",
];

/// Where the test venv lives: `$GUARD_TEST_VENV`, else `~/.cache/guard-tests/venv`. The
/// tests find it the same way.
pub fn test_venv() -> PathBuf {
    std::env::var_os("GUARD_TEST_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/guard-tests/venv")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache/guard-tests/venv"))
}
/// The peer (xdp-filter) and the tool that runs it under BPF_PROG_TEST_RUN.
const BENCH_PACKAGES: &[&str] = &["iproute2", "bpftool", "xdp-tools"];

pub fn ensure(needs: Needs) -> Result<()> {
    let started = Instant::now();
    let mut packages: Vec<&str> = BUILD_PACKAGES.to_vec();
    match needs {
        Needs::Build => {}
        Needs::Test => {
            packages.extend(TEST_PACKAGES);
            if !on_path("kubectl") {
                packages.push(KUBECTL_PACKAGE);
            }
        }
        Needs::Bench => packages.extend(BENCH_PACKAGES),
    }
    ensure_packages(&packages)?;
    if needs == Needs::Test {
        ensure_test_venv()?;
    }
    ensure_bpf_linker()?;
    ensure_toolchain_link()?;
    step(&format!(
        "toolchain ready ({:.1}s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The Python venv with the offline Kubernetes validators, made with Debian's python3 and
/// filled from PyPI once; later runs find it ready.
fn ensure_test_venv() -> Result<()> {
    let venv = test_venv();
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args([
            "-c",
            "import kubernetes_validate, yaml, cloudcoil.models.prometheus_operator",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ready {
        return Ok(());
    }
    step(&format!(
        "creating the test venv {} ({} from PyPI)",
        venv.display(),
        TEST_VENV_PACKAGES.join(" ")
    ));
    let made = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .context("failed to run /usr/bin/python3 -m venv")?;
    if !made.success() {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(TEST_VENV_PACKAGES)
        .status()
        .context("failed to run pip")?;
    if !pip.success() {
        bail!(
            "pip install {} into {} failed (PyPI must be reachable)",
            TEST_VENV_PACKAGES.join(" "),
            venv.display()
        );
    }
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
