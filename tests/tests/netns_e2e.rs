//! Tier 3: the `guard` binary enforcing on the host end of a veth pair, with real sockets:
//! listeners on the host, clients in a network namespace the test created.

use std::{
    io::{ErrorKind, Read as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    process::Output,
    time::Duration,
};

use guard_tests::{Daemon, Dirs, PolicyFile, TestNet, rule_packets};

fn tcp_listener(net: &TestNet) -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind((net.host_ip, 0)).expect("bind tcp listener");
    let a = l.local_addr().unwrap();
    (l, a)
}

fn udp_socket(net: &TestNet) -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind((net.host_ip, 0)).expect("bind udp socket");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

fn send_udp_from(net: &TestNet, to: SocketAddr, payload: &[u8]) {
    let peer = net.peer_ip;
    net.ns.run(|| {
        let s = UdpSocket::bind((peer, 0)).expect("bind in namespace");
        s.send_to(payload, to).expect("send_to");
    });
}

fn received(sock: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv: {e}"),
    }
}

fn policy_for(net: &TestNet, mode: &str, tcp_port: u16, udp_port: u16) -> PolicyFile {
    PolicyFile::new(&format!(
        r#"version = 1
mode = "{mode}"
interfaces = ["{}"]
default = "deny"
failsafe_ports = []

[[ingress]]
name = "tcp-allowed"
proto = "tcp"
ports = [{tcp_port}]
from = ["198.18.0.0/15"]

[[ingress]]
name = "udp-allowed"
proto = "udp"
ports = [{udp_port}]
"#,
        net.host_if
    ))
}

#[test]
fn allowed_port_connects_denied_port_times_out_and_counters_say_so() {
    let net = TestNet::new();
    let (tcp_ok, tcp_ok_addr) = tcp_listener(&net);
    let (_tcp_no, tcp_no_addr) = tcp_listener(&net);
    let (udp_ok, udp_ok_addr) = udp_socket(&net);
    let (udp_no, udp_no_addr) = udp_socket(&net);
    // Before guard: both ports reachable (the test network itself works).
    assert_eq!(net.connect(tcp_no_addr, Duration::from_secs(3)), Ok(()));

    let policy = policy_for(&net, "enforce", tcp_ok_addr.port(), udp_ok_addr.port());
    let mut daemon = Daemon::start(&["--policy", policy.arg(), "--kernel-log", "debug"]);
    assert!(net.has_xdp(), "XDP should be attached to {}", net.host_if);

    assert_eq!(net.connect(tcp_ok_addr, Duration::from_secs(3)), Ok(()));
    let (mut conn, _) = tcp_ok.accept().expect("accept the allowed connection");
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(conn.read(&mut [0u8; 1]).expect("peer closed"), 0);
    assert_eq!(
        net.connect(tcp_no_addr, Duration::from_millis(1500)),
        Err(ErrorKind::TimedOut),
        "a denied port must time out (SYN dropped), not be refused"
    );
    send_udp_from(&net, udp_ok_addr, b"allowed");
    send_udp_from(&net, udp_no_addr, b"denied");
    assert_eq!(received(&udp_ok).as_deref(), Some(&b"allowed"[..]));
    assert_eq!(
        received(&udp_no),
        None,
        "the denied datagram must not arrive"
    );

    let stats = daemon.dirs.stats();
    assert_eq!(stats["mode"], "enforce");
    assert_eq!(rule_packets(&stats, "udp-allowed"), 1, "{stats}");
    let tcp_allowed = rule_packets(&stats, "tcp-allowed");
    assert!(
        tcp_allowed >= 3,
        "SYN, ACK and FIN of the allowed connection: {stats}"
    );
    let default = rule_packets(&stats, "default");
    // The denied SYN (and a retransmission within 1.5 s) and the denied datagram.
    assert!((2..=3).contains(&default), "{stats}");
    let policy_reason = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "policy")
        .unwrap();
    assert_eq!(policy_reason["packets"].as_u64(), Some(default), "{stats}");

    let status = daemon.stop();
    // Fail-static: the stopped daemon's programs keep enforcing until `guard unload`.
    assert!(net.has_xdp(), "SIGTERM leaves enforcement in place");
    assert_eq!(
        net.connect(tcp_no_addr, Duration::from_millis(1000)),
        Err(ErrorKind::TimedOut)
    );
    let out = daemon.unload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.success(),
        "guard exits 0 on SIGTERM: {status}\n{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(
        log.contains("guard_ebpf")
            && log.contains(&format!("drop rule=0 proto=0 dport={}", tcp_no_addr.port())),
        "kernel log records (aya-log) should reach the daemon's log:\n{log}"
    );
    assert!(
        log.contains("daemon stopping") && log.contains("signal=\"SIGTERM\""),
        "{log}"
    );
    assert!(!net.has_xdp(), "guard unload detaches");
    assert!(
        !daemon.dirs.pin_dir.exists(),
        "guard unload removes the pins"
    );
    assert_eq!(
        net.connect(tcp_no_addr, Duration::from_secs(3)),
        Ok(()),
        "after detach the port is reachable again"
    );
}

#[test]
fn embedded_default_policy_audits_and_drops_nothing() {
    let net = TestNet::new();
    let (_l, addr) = tcp_listener(&net);
    // No --policy and no system policy file: the embedded default (audit mode) runs, here on
    // the test's veth instead of the default-route interface.
    let mut daemon = Daemon::start_with_env(
        &["--interface", &net.host_if],
        &[("GUARD_SYSTEM_POLICY", "/nonexistent/guard/policy.toml")],
    );
    let log = daemon.log_text();
    assert!(
        log.contains("running the embedded default policy in audit mode"),
        "{log}"
    );
    assert!(log.contains("guard auditing"), "{log}");
    assert_eq!(
        net.connect(addr, Duration::from_secs(3)),
        Ok(()),
        "audit mode drops nothing"
    );
    let stats = daemon.dirs.stats();
    assert_eq!(stats["mode"], "audit");
    assert_eq!(stats["policy"], "<embedded default policy>");
    let default = stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "default")
        .unwrap();
    assert_eq!(default["action"], "audit");
    assert!(
        default["packets"].as_u64().unwrap() >= 1,
        "the would-drop SYN is counted: {stats}"
    );
    assert!(daemon.stop_with(libc::SIGINT).success());
    assert!(net.has_xdp(), "SIGINT leaves enforcement in place");
    assert!(daemon.unload().status.success());
    assert!(!net.has_xdp(), "guard unload detaches");
}

fn run_guard(dirs: &Dirs, args: &[&str]) -> Output {
    dirs.guard().args(args).output().expect("run guard")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn missing_policy_file_is_a_one_line_error_with_exit_2() {
    let dirs = Dirs::new();
    let out = run_guard(&dirs, &["run", "--policy", "/nonexistent/missing.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/missing.toml") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn unknown_interface_is_named_and_nothing_is_left_attached() {
    let net = TestNet::new();
    let dirs = Dirs::new();
    let policy = PolicyFile::new(&format!(
        "interfaces = [\"{}\", \"gtnosuch0\"]\n[[ingress]]\nname = \"a\"\nproto = \"tcp\"\nports = [1]\n",
        net.host_if
    ));
    let out = run_guard(&dirs, &["run", "--policy", policy.arg()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interface `gtnosuch0` does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(!net.has_xdp(), "nothing may stay attached");
    assert!(!dirs.pin_dir.exists() && !dirs.run_dir.join("state.json").exists());
}

#[test]
fn malformed_policy_is_reported_as_file_line_col_with_exit_1_and_nothing_loaded() {
    let net = TestNet::new();
    let dirs = Dirs::new();
    let policy = PolicyFile::new(&format!(
        "interfaces = [\"{}\"]\n[[ingress]]\nname = \"a\"\nproto = \"tcp\"\nports = [70000]\n",
        net.host_if
    ));
    for cmd in [
        &["run", "--policy", policy.arg()][..],
        &["check", policy.arg()][..],
    ] {
        let out = run_guard(&dirs, cmd);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {}", stderr(&out));
        let want = format!(
            "{}:5:10: port 70000 is out of range: ports are 1-65535",
            policy.arg()
        );
        assert_eq!(stderr(&out).trim_end(), want, "{cmd:?}");
    }
    assert!(!net.has_xdp());
    let syntax = PolicyFile::new("interfaces = [\"x\"\nmode = 1\n");
    let out = run_guard(&dirs, &["check", syntax.arg()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!("{}:2:", syntax.arg())),
        "{}",
        stderr(&out)
    );
}
