//! Tier 3: guard as a least-privilege service. The daemon runs as root with every
//! capability outside the systemd unit's bounding set dropped (`setpriv --bounding-set`):
//! enforcement on a test veth, a live reload and the control socket work. With a needed
//! capability removed it fails at start and names it; the doctor without the optional ones
//! degrades to findings.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use guard_tests::{Daemon, PolicyFile, TestNet, json_stdout, policies};

/// The unit's CapabilityBoundingSet, as setpriv spells it.
const UNIT_CAPS: &str = "-all,+bpf,+net_admin,+perfmon";

fn policy_text(net: &TestNet, ports: &[u16]) -> String {
    let mut s = policies::head(&net.host_if, "enforce", "deny");
    for port in ports {
        s += &policies::allow(&format!("p{port}"), "tcp", &[*port]);
    }
    s
}

fn listener(net: &TestNet) -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind((net.host_ip, 0)).unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn write_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn the_unit_capabilities_suffice_and_a_missing_one_is_named() {
    let net = TestNet::new();
    let (_a_l, a) = listener(&net);
    let (_b_l, b) = listener(&net);
    let policy = PolicyFile::new(&policy_text(&net, &[a.port()]));
    let daemon = Daemon::start_wrapped(
        &["setpriv", "--bounding-set", UNIT_CAPS, "--"],
        &["--policy", policy.arg()],
    );
    assert_eq!(net.connect(a, Duration::from_secs(2)), Ok(()), "allowed");
    assert_eq!(
        net.connect(b, Duration::from_millis(300)),
        Err(std::io::ErrorKind::TimedOut),
        "denied"
    );
    // A live reload opens b.
    write_rename(&policy.path, &policy_text(&net, &[a.port(), b.port()]));
    let deadline = Instant::now() + Duration::from_secs(3);
    while net.connect(b, Duration::from_millis(100)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the reload did not open b:\n{}",
            daemon.log_text()
        );
    }
    // The control socket answers.
    let status = json_stdout(
        &daemon
            .dirs
            .guard()
            .args(["status", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(status["generation"], 2, "{status}");
    assert_eq!(status["running"], true);
    // The doctor without CAP_SYS_ADMIN and CAP_SYS_PTRACE: findings, not a crash.
    let doctor = std::process::Command::new("setpriv")
        .args(["--bounding-set", UNIT_CAPS, "--"])
        .arg(guard_tests::guard_bin())
        .arg("--run-dir")
        .arg(&daemon.dirs.run_dir)
        .arg("--pin-dir")
        .arg(&daemon.dirs.pin_dir)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(matches!(doctor.status.code(), Some(0 | 1)), "{doctor:?}");
    let report = json_stdout(&doctor);
    assert!(report["findings"].as_array().is_some_and(|f| !f.is_empty()));

    // Without CAP_PERFMON: refused at start, naming it, before anything changes.
    let other = TestNet::new();
    let policy = PolicyFile::new(&policy_text(&other, &[80]));
    let dirs = guard_tests::Dirs::new();
    // A cgroup of the test's own, never the root one, should the check ever let it through.
    let cgroup = guard_tests::Cgroup::new();
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set", "-all,+bpf,+net_admin", "--"])
        .arg(guard_tests::guard_bin())
        .arg("--run-dir")
        .arg(&dirs.run_dir)
        .arg("--pin-dir")
        .arg(&dirs.pin_dir)
        .args(["run", "--policy", policy.arg(), "--metrics-addr", "off"])
        .args(["--cgroup", cgroup.arg()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("lacks CAP_PERFMON"), "{stderr}");
    assert!(!other.has_xdp(), "nothing attached");
}
