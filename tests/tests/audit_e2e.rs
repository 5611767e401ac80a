//! Tier 3: `guard audit`. Listening sockets read by sock_diag inside a test namespace and
//! judged against a policy (unexpected listeners, the exposure matrix, unused rules); the
//! client's view with `--probe` from a namespace through a veth the daemon enforces on; the
//! daemon's own listener audit (`guard_unexpected_listeners`), on its tick and on bind
//! events from its cgroup. Real sockets everywhere.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use guard_tests::{Daemon, Dirs, NetNs, PolicyFile, TestNet, json_stdout};
use serde_json::Value;

fn row<'a>(report: &'a Value, proto: &str, port: u16) -> &'a Value {
    report["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .find(|r| r["proto"] == proto && r["port"] == port)
        .unwrap_or_else(|| panic!("no {proto}/{port} listener in {report}"))
}

const ZONED: &str = r#"
version = 1
interfaces = ["eth0"]
default = "deny"
failsafe_ports = []
[zones]
lab = ["198.18.0.0/15"]
office = ["10.0.0.0/8"]
[[ingress]]
name = "web"
proto = "tcp"
ports = [8080]
from = ["lab"]
[[ingress]]
name = "admin"
proto = "tcp"
ports = [9443]
from = ["office"]
[[ingress]]
name = "metrics"
proto = "tcp"
ports = [9100]
from = ["any"]
[listen]
tcp = [8080, 9443, 9100]
"#;

#[test]
fn audit_in_a_namespace_finds_unexpected_listeners_and_exposure() {
    let ns = NetNs::new();
    let policy = PolicyFile::new(ZONED);
    let dirs = Dirs::new();
    let audit = || {
        dirs.guard()
            .args([
                "audit",
                "--json",
                "--policy",
                policy.arg(),
                "--netns",
                &ns.name,
            ])
            .output()
            .expect("run guard audit")
    };
    let (dirty, clean) = ns.run(|| {
        let web = TcpListener::bind("0.0.0.0:8080").unwrap();
        let admin = TcpListener::bind("[::]:9443").unwrap();
        let db = TcpListener::bind("0.0.0.0:5432").unwrap();
        let cache = UdpSocket::bind("127.0.0.1:6379").unwrap();
        let dirty = audit();
        drop((db, cache));
        let clean = audit();
        drop((web, admin));
        (dirty, clean)
    });

    assert_eq!(
        dirty.status.code(),
        Some(1),
        "unexpected listeners exit 1: {}",
        String::from_utf8_lossy(&dirty.stderr)
    );
    let report = json_stdout(&dirty);
    assert_eq!(report["unexpected_listeners"], 2, "{report}");
    assert_eq!(report["netns"], ns.name.as_str());
    let db = row(&report, "tcp", 5432);
    assert_eq!(db["expected"], false);
    assert_eq!(db["exposure"]["lab"], "closed");
    let pid = std::process::id();
    assert!(
        db["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid),
        "the owning process is this test: {db}"
    );
    let cache = row(&report, "udp", 6379);
    assert_eq!(cache["expected"], false);
    assert_eq!(cache["exposure"]["lab"], "local");
    let web = row(&report, "tcp", 8080);
    assert_eq!(web["expected"], true);
    assert_eq!(
        (
            &web["exposure"]["lab"],
            &web["exposure"]["office"],
            &web["exposure"]["(outside zones)"]
        ),
        (&"open".into(), &"closed".into(), &"closed".into())
    );
    let admin = row(&report, "tcp", 9443);
    assert_eq!(admin["address"], "::");
    assert_eq!(admin["exposure"]["office"], "open");
    assert_eq!(admin["exposure"]["lab"], "closed");
    // Nothing listens on 9100: least-privilege finding.
    let unused = report["unused_rules"].as_array().unwrap();
    assert_eq!(unused.len(), 1, "{report}");
    assert_eq!(unused[0]["rule"], "metrics");
    assert_eq!(unused[0]["ports"][0], "9100");

    assert!(
        clean.status.success(),
        "no unexpected listener: exit 0: {}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert_eq!(json_stdout(&clean)["unexpected_listeners"], 0);

    // The human table says the same.
    let text = ns.run(|| {
        let _db = TcpListener::bind("0.0.0.0:5432").unwrap();
        dirs.guard()
            .args(["audit", "--policy", policy.arg(), "--netns", &ns.name])
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("violation: tcp 0.0.0.0:5432 is listening but not in [listen]"),
        "{stdout}"
    );
    assert!(stdout.contains("least privilege: rule `metrics` allows tcp 9100"));
}

#[test]
fn audit_without_a_policy_or_daemon_says_what_to_do() {
    let dirs = Dirs::new();
    let out = dirs.guard().arg("audit").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--policy FILE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dirs
        .guard()
        .args(["audit", "--policy", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = dirs
        .guard()
        .args(["audit", "--policy", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "an empty policy is invalid");
    let policy = PolicyFile::new(ZONED);
    let out = dirs
        .guard()
        .args([
            "audit",
            "--netns",
            "gt-no-such-ns",
            "--policy",
            policy.arg(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("network namespace /run/netns/gt-no-such-ns"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn probe_policy(net: &TestNet, web: u16, admin_from: &str) -> String {
    format!(
        "mode = \"enforce\"\ninterfaces = [\"{}\"]\ndefault = \"deny\"\nfailsafe_ports = []\n\
         [zones]\nlab = [\"198.18.0.0/15\"]\n\
         [[ingress]]\nname = \"web\"\nproto = \"tcp\"\nports = [{web}]\nfrom = [\"lab\"]\n\
         [[ingress]]\nname = \"admin\"\nproto = \"tcp\"\nports = [{}]\nfrom = [\"{admin_from}\"]\n",
        net.host_if,
        web + 1
    )
}

#[test]
fn probe_from_a_namespace_shows_closed_ports_closed() {
    let net = TestNet::new();
    let web = TcpListener::bind((net.host_ip, 0)).unwrap();
    let port = web.local_addr().unwrap().port();
    let admin = TcpListener::bind((net.host_ip, port + 1)).unwrap();
    // The daemon admits admin only from 10/8: the namespace (198.18/15) meets a drop.
    let running = PolicyFile::new(&probe_policy(&net, port, "10.0.0.0/8"));
    let daemon = Daemon::start(&["--policy", running.arg()]);
    let probe = |policy: Option<&PolicyFile>| {
        let mut cmd = daemon.dirs.guard();
        cmd.args(["audit", "--json", "--probe"])
            .arg(net.host_ip.to_string())
            .args(["--netns", &net.ns.name, "--timeout", "0.5"])
            .args(["--port", &format!("tcp/{}", port + 2)]);
        if let Some(p) = policy {
            cmd.args(["--policy", p.arg()]);
        }
        cmd.output().expect("run guard audit --probe")
    };

    // Judged by the running policy: everything is as it says.
    let out = probe(None);
    let report = json_stdout(&out);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["source"], net.peer_ip.to_string());
    let result = |report: &Value, p: u16| -> (String, String) {
        let r = report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["port"] == p)
            .unwrap_or_else(|| panic!("no probe of {p}: {report}"))
            .clone();
        (
            r["observed"].as_str().unwrap().to_owned(),
            r["judgement"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(result(&report, port), ("open".into(), "ok".into()));
    assert_eq!(result(&report, port + 1), ("filtered".into(), "ok".into()));
    assert_eq!(result(&report, port + 2), ("filtered".into(), "ok".into()));

    // Judged by an intended policy that closes the web port to the lab: the probe finds it
    // open (the running policy disagrees) and says so with exit 1.
    let intended = PolicyFile::new(
        &probe_policy(&net, port, "10.0.0.0/8")
            .replace("from = [\"lab\"]", "from = [\"192.0.2.0/24\"]"),
    );
    let out = probe(Some(&intended));
    assert_eq!(out.status.code(), Some(1), "{}", json_stdout(&out));
    let report = json_stdout(&out);
    assert_eq!(report["violations"], 1);
    assert_eq!(result(&report, port), ("open".into(), "violation".into()));
    drop((web, admin));
}

fn unexpected_listeners(daemon: &Daemon) -> f64 {
    let (code, metrics) = daemon.http_get("/metrics");
    assert_eq!(code, 200);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("guard_unexpected_listeners "))
        .unwrap_or_else(|| panic!("no guard_unexpected_listeners in\n{metrics}"))
        .parse()
        .unwrap()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn daemon_exports_unexpected_listeners_on_its_tick_and_on_bind_events() {
    let net = TestNet::new();
    // Audit mode: binds in the daemon's cgroup to unlisted ports succeed and are reported,
    // which asks for a listener audit at once. The tick is an hour away.
    let policy = PolicyFile::new(&format!(
        "mode = \"audit\"\ninterfaces = [\"{}\"]\ndefault = \"deny\"\nfailsafe_ports = []\n\
         [listen]\ntcp = [1]\n[health]\ninterval_seconds = 3600\n",
        net.host_if
    ));
    let daemon = Daemon::start(&["--policy", policy.arg()]);
    let before = unexpected_listeners(&daemon);
    // A fixed port (binding port 0 is never judged): one the kernel just handed out.
    let port = TcpListener::bind(SocketAddr::from((net.host_ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listener = daemon
        .cgroup
        .run(|| TcpListener::bind(SocketAddr::from((net.host_ip, port))).unwrap());
    wait_for(
        "the bind event's audit counts the new listener",
        Duration::from_secs(5),
        || unexpected_listeners(&daemon) == before + 1.0,
    );
    let events = daemon
        .dirs
        .guard()
        .args(["events"])
        .output()
        .expect("guard events");
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events.lines().any(|l| l.contains("\"unexpected_listener\"")
            && l.contains(&format!("\"dport\":{port}"))
            && l.contains(&format!("\"pid\":{}", std::process::id()))),
        "{events}"
    );
    drop(listener);
    // Closing makes no bind event: a policy change is one more moment the daemon audits.
    let out = daemon
        .dirs
        .guard()
        .args(["apply", policy.arg()])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(
        &policy.path,
        std::fs::read_to_string(&policy.path)
            .unwrap()
            .replace("interval_seconds = 3600", "interval_seconds = 1"),
    )
    .unwrap();
    let out = daemon
        .dirs
        .guard()
        .args(["apply", policy.arg()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the listener gone from the count",
        Duration::from_secs(5),
        || unexpected_listeners(&daemon) == before,
    );
    // And the 1 s tick finds a listener outside the daemon's cgroup (no bind event).
    let outside = TcpListener::bind(SocketAddr::from((net.host_ip, 0))).unwrap();
    wait_for(
        "the tick counts a listener outside guard's cgroup",
        Duration::from_secs(5),
        || unexpected_listeners(&daemon) == before + 1.0,
    );
    drop(outside);
}

/// Issue K-1: `guard audit` lists UDP-Lite sockets, judged as UDP.
#[test]
fn audit_lists_udplite_sockets_as_udp() {
    use std::os::fd::FromRawFd as _;
    let ns = NetNs::new();
    let policy = PolicyFile::new(ZONED);
    let dirs = Dirs::new();
    let out = ns.run(|| {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a new, valid fd.
        let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_port = 5140u16.to_be();
        // SAFETY: a valid fd and sockaddr.
        let rc = unsafe {
            libc::bind(
                fd,
                &sin as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let out = dirs
            .guard()
            .args([
                "audit",
                "--json",
                "--policy",
                policy.arg(),
                "--netns",
                &ns.name,
            ])
            .output()
            .expect("run guard audit");
        drop(sock);
        out
    });
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_stdout(&out);
    let lite = row(&report, "udp", 5140);
    assert_eq!(lite["expected"], false, "{report}");
}
