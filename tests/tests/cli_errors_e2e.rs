//! Tier 3: error paths an operator meets (issue K-14, K-15): an oversized apply, a policy
//! that is not UTF-8, `guard stats | head`, `guard doctor` without root, the status of a
//! dead daemon, and the daemon's own metrics listener in its listener audit.

use std::{
    io::Read as _,
    process::{Command, Stdio},
};

use guard_tests::{Daemon, PolicyFile, TestNet, guard_bin, policies};

fn policy(net: &TestNet, extra: &str) -> PolicyFile {
    PolicyFile::new(&(policies::head_with_failsafe(&net.host_if, "enforce", "allow") + extra))
}

#[test]
fn an_oversized_apply_says_why_not_broken_pipe() {
    let net = TestNet::new();
    let p = policy(&net, "");
    let daemon = Daemon::start(&["--policy", p.arg()]);
    // A valid policy larger than the control socket takes: 17 MiB of comment.
    let big = format!(
        "{}# {}\n",
        std::fs::read_to_string(p.arg()).unwrap(),
        "x".repeat(17 << 20)
    );
    let big = PolicyFile::new(&big);
    let out = daemon
        .dirs
        .guard()
        .args(["apply", big.arg()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("more than the control socket takes") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

#[test]
fn a_policy_that_is_not_utf8_gets_file_line_col() {
    let net = TestNet::new();
    let p = PolicyFile::new("placeholder");
    std::fs::write(
        p.arg(),
        format!("interfaces = [\"{}\"]\nmode = \"au\u{0}", net.host_if)
            .into_bytes()
            .into_iter()
            .map(|b| if b == 0 { 0xff } else { b })
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let out = Command::new(guard_bin())
        .args(["check", p.arg()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}:2:11: the policy is not UTF-8 text (byte 0xff)",
            p.arg()
        )),
        "{stderr}"
    );
}

#[test]
fn stats_into_a_closed_pipe_ends_quietly() {
    let net = TestNet::new();
    let p = policy(&net, "");
    let daemon = Daemon::start(&["--policy", p.arg()]);
    let mut child = daemon
        .dirs
        .guard()
        .args(["stats"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read nothing and close our end: the next write hits a closed pipe.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?} {stderr}"
    );
}

#[test]
fn doctor_without_root_says_so_and_fails() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(guard_bin())
        .arg("doctor")
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("guard doctor needs root"), "{stderr}");
}

#[test]
fn a_dead_daemon_has_no_uptime_and_its_metrics_listener_is_its_own() {
    let net = TestNet::new();
    // With [listen], every other listener is unexpected; the daemon's metrics listener is
    // not reported.
    let p = policy(
        &net,
        "[listen]\nallow = [22]\n[health]\ninterval_seconds = 1\n",
    );
    let mut daemon = Daemon::start(&["--policy", p.arg()]);
    let metrics = daemon.metrics_addr();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let events = daemon.dirs.guard().args(["events"]).output().unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        !events.lines().any(|l| l.contains("unexpected_listener")
            && l.contains(&format!("\"dport\":{}", metrics.port()))),
        "{events}"
    );
    daemon.stop_with(libc::SIGKILL);
    let out = daemon.dirs.guard().args(["status"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("daemon NOT running"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("uptime     - ")),
        "a dead daemon has no uptime: {stdout}"
    );
}

#[test]
fn status_and_stats_of_a_running_daemon_read_as_text() {
    let net = TestNet::new();
    let p = policy(&net, "");
    let daemon = Daemon::start(&["--policy", p.arg()]);
    let out = daemon.dirs.guard().args(["status"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(running)"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("uptime     ") && l.ends_with('s')),
        "{stdout}"
    );
    let out = daemon.dirs.guard().args(["stats"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("RULE") && l.contains("PACKETS")),
        "{stdout}"
    );
}

#[test]
fn the_build_is_named_by_version_and_metrics() {
    let out = Command::new(guard_bin()).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).into_owned();
    let sha = version
        .split("ebpf sha256 ")
        .nth(1)
        .map(|s| s.trim().trim_end_matches(')'))
        .unwrap_or_default()
        .to_owned();
    assert!(
        version.starts_with("guard 0.")
            && version.contains("(commit ")
            && version.contains(", built 20"),
        "{version}"
    );
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{version}"
    );
    let net = TestNet::new();
    let p = policy(&net, "");
    let daemon = Daemon::start(&["--policy", p.arg()]);
    let (_, metrics) = daemon.http_get("/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("guard_build_info{")
            && l.contains(&format!("ebpf_sha256=\"{sha}\""))
            && l.ends_with(" 1")),
        "{metrics}"
    );
    let status = guard_tests::json_stdout(
        &daemon
            .dirs
            .guard()
            .args(["status", "--json"])
            .output()
            .unwrap(),
    );
    let hash = status["policy_hash"].as_str().unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("guard_policy_info{")
            && l.contains(&format!("hash=\"{hash}\""))
            && l.contains(&format!("source=\"{}\"", p.arg()))),
        "{metrics}"
    );
}

#[test]
fn apply_without_a_daemon_names_the_policy_errors_first() {
    // The daemon validates what `guard apply` sends (the CLI does not parse it too); with
    // no daemon, the CLI says what is wrong with the policy before saying nothing runs.
    let dirs = guard_tests::Dirs::new();
    let bad = PolicyFile::new("interfaces = [\"x\"]\nmode = \"block\"\n");
    let out = dirs.guard().args(["apply", bad.arg()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:2:8: unknown mode", bad.arg())),
        "{stderr}"
    );
    let good = PolicyFile::new("interfaces = [\"x\"]\n");
    let out = dirs.guard().args(["apply", good.arg()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("guard is not running"), "{stderr}");
}
