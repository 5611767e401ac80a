//! Developer entry points: `cargo xtask setup|build|run|test|bench`.
//!
//! Every command that builds first runs [`setup::ensure`], which installs whatever the eBPF
//! build needs and is missing (Debian packages, bpf-linker, the rustup link to Debian's
//! compiler) and is a quick no-op when everything is present.

mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test guard")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build and the tests need (idempotent).
    Setup,
    /// Build guard with its real eBPF object embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the daemon: `guard run [ARGS...]` (as root).
    ///
    /// With no ARGS the daemon reads /etc/guard/policy.toml, or runs its embedded default
    /// policy (audit mode) when that file does not exist.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `guard run`, e.g. `-- --policy policies/example.toml`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build and run every test: unit tests, then the privileged BPF_PROG_TEST_RUN and
    /// network-namespace tests (root, one at a time).
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Build the Debian package `target/debian/guard_<version>_<arch>.deb` (release build
    /// unless --debug).
    Package {
        /// Package the debug build (what the tests use).
        #[arg(long)]
        debug: bool,
        /// The package version (default: the crate's).
        #[arg(long)]
        version: Option<String>,
    },
    /// Measure per-packet cost (BPF_PROG_TEST_RUN) against an empty XDP program and
    /// Debian's xdp-filter, and write BENCHMARKS.md (root). Not a test: it asserts nothing.
    Bench {
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    let root = workspace_root();
    match cmd {
        Cmd::Setup => setup::ensure(setup::Needs::Test),
        Cmd::Build { release } => {
            setup::ensure(setup::Needs::Build)?;
            build(&root, release)
        }
        Cmd::Run { release, args } => {
            setup::ensure(setup::Needs::Build)?;
            build(&root, release)?;
            let bin = root
                .join("target")
                .join(if release { "release" } else { "debug" })
                .join("guard");
            step(&format!("running {} run {}", bin.display(), args.join(" ")));
            // Become the daemon: Ctrl-C and its exit status are guard's own.
            let err = Command::new(&bin).arg("run").args(&args).exec();
            Err(err).with_context(|| format!("failed to start {}", bin.display()))
        }
        Cmd::Test { filter } => {
            setup::ensure(setup::Needs::Test)?;
            test(&root, filter.as_deref())
        }
        Cmd::Package { debug, version } => {
            setup::ensure(setup::Needs::Build)?;
            build(&root, !debug)?;
            let bin = root
                .join("target")
                .join(if debug { "debug" } else { "release" })
                .join("guard");
            let version = version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
            let deb = package::package(&root, &bin, &version)?;
            step(&format!("package: {}", deb.display()));
            Ok(())
        }
        Cmd::Bench { out } => {
            setup::ensure(setup::Needs::Bench)?;
            step("building guard and the benchmark harness (release: what users run)");
            check(
                cargo(&root)
                    .args([
                        "build",
                        "--release",
                        "--package",
                        "guard-userspace",
                        "--bins",
                    ])
                    .status()?,
                "cargo build --release (guard)",
            )?;
            check(
                cargo(&root)
                    .args([
                        "build",
                        "--release",
                        "--package",
                        "guard-tests",
                        "--bin",
                        "guard-bench",
                    ])
                    .status()?,
                "cargo build --release (bench)",
            )?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                bail!("the benchmark loads BPF programs: run `sudo -E cargo xtask bench`");
            }
            step("running the benchmark (a few minutes)");
            let out = if out.is_absolute() {
                out
            } else {
                root.join(out)
            };
            // The harness runs the `guard` binary next to itself (target/release).
            let status = Command::new(root.join("target/release/guard-bench"))
                .arg(&out)
                .status()
                .context("failed to run guard-bench")?;
            check(status, "guard-bench")
        }
    }
}

/// Environment variable read by guard-userspace's build script: `build` compiles and embeds
/// the real eBPF object (and fails if it cannot); anything else embeds an empty stub.
const EBPF_ENV: (&str, &str) = ("GUARD_EBPF", "build");

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root).env(EBPF_ENV.0, EBPF_ENV.1);
    cmd
}

fn build(root: &Path, release: bool) -> Result<()> {
    step(
        "building guard (the eBPF object is compiled and embedded; the first build takes a few minutes)",
    );
    let mut cmd = cargo(root);
    cmd.args(["build", "--package", "guard-userspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    check(cmd.status()?, "cargo build")
}

fn test(root: &Path, filter: Option<&str>) -> Result<()> {
    step("checking formatting and lints (cargo fmt --check, cargo clippy -D warnings)");
    check(
        cargo(root).args(["fmt", "--all", "--check"]).status()?,
        "cargo fmt --check",
    )?;
    check(
        cargo(root)
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .status()?,
        "cargo clippy",
    )?;
    build(root, false)?;

    let mut totals = Totals::default();
    step("tier 1: unit tests (no root needed)");
    let mut cmd = cargo(root);
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "guard-tests",
        "--exclude",
        "guard-ebpf",
    ]);
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    let unit = run_tests(cmd, &mut totals);
    // SAFETY: geteuid has no preconditions.
    let privileged = if unsafe { libc::geteuid() } != 0 {
        Err(anyhow::anyhow!(
            "tiers 2 and 3 (BPF_PROG_TEST_RUN and network-namespace tests) need root: \
             run `sudo -E cargo xtask test` (they are never skipped)"
        ))
    } else {
        step("building the Debian package and a newer copy for the package test");
        check(
            cargo(root)
                .args(["build", "--package", "guard-userspace", "--bins"])
                .status()?,
            "cargo build",
        )?;
        let bin = root.join("target/debug/guard");
        let deb = package::package(root, &bin, env!("CARGO_PKG_VERSION"))?;
        let upgrade = package::package(
            root,
            &bin,
            &format!("{}+upgrade1", env!("CARGO_PKG_VERSION")),
        )?;
        step("tiers 2 and 3: BPF_PROG_TEST_RUN and network-namespace tests (root, one at a time)");
        let mut cmd = cargo(root);
        cmd.env("GUARD_TEST_DEB", &deb)
            .env("GUARD_TEST_DEB_UPGRADE", &upgrade)
            .env("GUARD_TEST_VENV", setup::test_venv());
        cmd.args([
            "test",
            "--package",
            "guard-tests",
            "--tests",
            "--",
            "--test-threads=1",
        ]);
        if let Some(f) = filter {
            cmd.arg(f);
        }
        run_tests(cmd, &mut totals)
    };
    // One closing line for all tiers.
    println!(
        "summary: {} passed, {} failed",
        totals.passed, totals.failed
    );
    unit.and(privileged)
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test`, echoing its output while adding up its `test result:` lines.
fn run_tests(mut cmd: Command, totals: &mut Totals) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to run cargo test")?;
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            totals.passed += count("passed");
            totals.failed += count("failed");
        }
    }
    check(child.wait()?, "cargo test")
}

fn check(status: std::process::ExitStatus, what: &str) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("{what} failed ({status})")
    }
}

pub(crate) fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
