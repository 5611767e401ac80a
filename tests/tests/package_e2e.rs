//! Tier 3: the Debian package, on this machine with dpkg (no systemd runs here, so the
//! maintainer scripts must cope). `cargo xtask test` builds the package and a copy with a
//! newer version, and names them in GUARD_TEST_DEB and GUARD_TEST_DEB_UPGRADE.
//!
//! One test, in order: contents and conffiles; lintian without errors; install; the unit's
//! checks (`systemd-analyze verify`, `security` ≤ 3.5); enforcement by the installed binary
//! on a test veth; an upgrade that leaves it attached and keeps a hand-edited policy; removal
//! that takes enforcement with it; purge that removes the configuration and logs.
//! It refuses to run where guard is installed or its default pins exist: it never touches a
//! real installation.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use guard_tests::{Cgroup, PolicyFile, TestNet, policies, require_root};

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]))
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn deb(var: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with `cargo xtask test`, which builds the package")
    });
    assert!(Path::new(&path).exists(), "{var}={path} does not exist");
    path
}

/// Purges the package and unloads the default pins if the test fails half-way.
struct Uninstall;

impl Drop for Uninstall {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = run(&["/usr/sbin/guard", "unload"]);
            let _ = run(&["dpkg", "--purge", "guard"]);
        }
    }
}

/// `/usr/sbin/guard run` with the default pin and run directories, on the test's veth and
/// cgroup.
fn start_installed(policy: &PolicyFile, cgroup: &Cgroup) -> Child {
    let child = Command::new("/usr/sbin/guard")
        .args(["run", "--policy", policy.arg(), "--cgroup", cgroup.arg()])
        .args(["--metrics-addr", "off"])
        .env_remove("GUARD_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the installed guard");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run(&["/usr/sbin/guard", "status", "--json"])
        .status
        .success()
        || !String::from_utf8_lossy(&run(&["/usr/sbin/guard", "status", "--json"]).stdout)
            .contains(&format!("\"pid\": {}", child.id()))
    {
        assert!(
            Instant::now() < deadline,
            "the installed guard did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn install_upgrade_remove_and_purge_round_trip() {
    require_root();
    let (v1, v2) = (deb("GUARD_TEST_DEB"), deb("GUARD_TEST_DEB_UPGRADE"));
    assert!(
        !run(&["dpkg", "-s", "guard"]).status.success(),
        "guard is installed on this machine: this test installs and purges the package, so it will not run here"
    );
    for path in [
        "/etc/guard",
        "/run/guard/guard.sock",
        "/run/guard/state.json",
        "/sys/fs/bpf/guard",
    ] {
        assert!(
            !Path::new(path).exists(),
            "{path} exists: a guard runs here; this test uses the default directories and will not touch it"
        );
    }
    // Contents, conffiles, control.
    let contents = ok(&["dpkg-deb", "--contents", &v1]);
    for path in [
        "./usr/sbin/guard",
        "./lib/systemd/system/guard.service",
        "./etc/guard/policy.toml",
        "./usr/share/doc/guard/examples/wso2-is-7.toml",
        "./usr/share/doc/guard/copyright",
        "./usr/share/man/man8/guard.8.gz",
        "./usr/share/man/man8/guard-run.8.gz",
        "./usr/share/bash-completion/completions/guard",
        "./usr/share/zsh/vendor-completions/_guard",
        "./usr/share/fish/vendor_completions.d/guard.fish",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} in:\n{contents}"
        );
    }
    let dir = std::env::temp_dir().join(guard_tests::unique("guard-deb-"));
    ok(&["dpkg-deb", "--control", &v1, dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(dir.join("conffiles")).unwrap(),
        "/etc/guard/policy.toml\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // lintian: no errors (its warnings are listed in docs/operations.md).
    let lintian = run(&["lintian", "--tag-display-limit", "0", &v1]);
    let report = String::from_utf8_lossy(&lintian.stdout);
    assert!(!report.lines().any(|l| l.starts_with("E:")), "{report}");

    // Install: the scripts cope without systemd; the default policy validates.
    let _uninstall = Uninstall;
    ok(&["dpkg", "-i", &v1]);
    assert!(ok(&["/usr/sbin/guard", "--version"]).starts_with("guard 0.1.0 (commit "));
    assert!(ok(&["/usr/sbin/guard", "check", "/etc/guard/policy.toml"]).contains("mode audit"));
    ok(&[
        "systemd-analyze",
        "verify",
        "/lib/systemd/system/guard.service",
    ]);
    let security = run(&[
        "systemd-analyze",
        "security",
        "--offline=yes",
        "/lib/systemd/system/guard.service",
    ]);
    let text = String::from_utf8_lossy(&security.stdout).into_owned()
        + &String::from_utf8_lossy(&security.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("guard.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 3.5, "systemd-analyze security: {score}\n{text}");
    // The operator edits the policy.
    let edited = std::fs::read_to_string("/etc/guard/policy.toml").unwrap() + "# edited by hand\n";
    std::fs::write("/etc/guard/policy.toml", &edited).unwrap();

    // Enforcement by the installed binary, on the test's veth and cgroup.
    let net = TestNet::new();
    let cgroup = Cgroup::new();
    let listener = TcpListener::bind((net.host_ip, 0)).unwrap();
    let allowed = listener.local_addr().unwrap();
    let denied = SocketAddr::from((net.host_ip, allowed.port() + 1));
    let policy = PolicyFile::new(
        &(policies::head(&net.host_if, "enforce", "deny")
            + &policies::allow("web", "tcp", &[allowed.port()])),
    );
    let mut v1_daemon = start_installed(&policy, &cgroup);
    assert_eq!(net.connect(allowed, Duration::from_secs(2)), Ok(()));
    assert_eq!(
        net.connect(denied, Duration::from_millis(300)),
        Err(std::io::ErrorKind::TimedOut)
    );

    // Upgrade: nothing detaches, the hand-edited policy stays.
    ok(&["dpkg", "-i", &v2]);
    assert!(net.has_xdp(), "the upgrade left the programs attached");
    assert!(
        Path::new("/sys/fs/bpf/guard/links").is_dir(),
        "and the pins"
    );
    assert_eq!(
        net.connect(denied, Duration::from_millis(300)),
        Err(std::io::ErrorKind::TimedOut),
        "still enforcing"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/guard/policy.toml").unwrap(),
        edited,
        "the conffile keeps the operator's edit"
    );
    assert!(ok(&["dpkg-query", "-W", "-f=${Version}", "guard"]).starts_with("0.1.0+"));
    // The new binary adopts the running enforcement (the unit's restart).
    let _ = v1_daemon.kill();
    let _ = v1_daemon.wait();
    let mut v2_daemon = start_installed(&policy, &cgroup);
    assert_eq!(net.connect(allowed, Duration::from_secs(2)), Ok(()));

    // Removal takes enforcement with the package.
    ok(&["dpkg", "-r", "guard"]);
    assert!(!net.has_xdp(), "removal detached the programs");
    assert!(
        !Path::new("/sys/fs/bpf/guard").exists(),
        "and removed the pins"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while v2_daemon.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the daemon stopped with the unload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        Path::new("/etc/guard/policy.toml").exists(),
        "remove keeps the configuration"
    );
    // Purge removes it, and the logs.
    std::fs::create_dir_all("/var/log/guard").unwrap();
    ok(&["dpkg", "--purge", "guard"]);
    assert!(!Path::new("/etc/guard").exists());
    assert!(!Path::new("/var/log/guard").exists());
    assert!(!Path::new("/usr/sbin/guard").exists());
}
