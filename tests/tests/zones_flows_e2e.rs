//! Tier 3: zones, replies to the host's own connections, and deny events, with the `guard`
//! binary on veth pairs into namespaces the tests create, and real sockets.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use guard_tests::{Daemon, PolicyFile, TestNet, reason_packets, rule_packets};

#[test]
fn clients_in_different_zones_get_different_answers() {
    let internal = TestNet::new();
    let dmz = TestNet::new();
    // One port number on both host addresses, for the public and the management service.
    let pub_int = TcpListener::bind((internal.host_ip, 0)).unwrap();
    let public = pub_int.local_addr().unwrap().port();
    let _pub_dmz = TcpListener::bind((dmz.host_ip, public)).unwrap();
    let mgmt_int = TcpListener::bind((internal.host_ip, 0)).unwrap();
    let mgmt = mgmt_int.local_addr().unwrap().port();
    let _mgmt_dmz = TcpListener::bind((dmz.host_ip, mgmt)).unwrap();

    let policy = PolicyFile::new(&format!(
        r#"mode = "enforce"
interfaces = ["{}", "{}"]
default = "deny"
failsafe_ports = []
[zones]
internal = ["{}/32"]
dmz = ["{}/32"]
[[ingress]]
name = "public"
proto = "tcp"
ports = [{public}]
[[ingress]]
name = "management"
proto = "tcp"
ports = [{mgmt}]
from = ["internal"]
[[ingress]]
name = "management-from-dmz"
proto = "tcp"
ports = [{mgmt}]
from = ["dmz"]
action = "deny"
"#,
        internal.host_if, dmz.host_if, internal.peer_ip, dmz.peer_ip
    ));
    let daemon = Daemon::start(&["--policy", policy.arg()]);
    let t = Duration::from_secs(3);
    assert_eq!(
        internal.connect((internal.host_ip, public).into(), t),
        Ok(())
    );
    assert_eq!(dmz.connect((dmz.host_ip, public).into(), t), Ok(()));
    assert_eq!(internal.connect((internal.host_ip, mgmt).into(), t), Ok(()));
    assert_eq!(
        dmz.connect((dmz.host_ip, mgmt).into(), Duration::from_millis(1500)),
        Err(ErrorKind::TimedOut),
        "the DMZ must not reach the management port"
    );
    let stats = daemon.dirs.stats();
    assert!(rule_packets(&stats, "public") >= 4, "{stats}");
    assert!(rule_packets(&stats, "management") >= 2, "{stats}");
    let denied = rule_packets(&stats, "management-from-dmz");
    assert!(
        (1..=2).contains(&denied),
        "the SYN and perhaps one retry: {stats}"
    );
    let mgmt_name = mgmt.to_string();
    let mgmt_port = stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["proto"] == "tcp" && p["port"] == mgmt_name.as_str())
        .unwrap();
    assert_eq!(mgmt_port["attempted"].as_u64(), Some(1 + denied), "{stats}");
    assert_eq!(mgmt_port["rejected"].as_u64(), Some(denied), "{stats}");
}

#[test]
fn replies_to_connections_the_host_opens_pass_under_default_deny() {
    let net = TestNet::new();
    // Servers in the namespace: a TCP echo and a UDP echo.
    let (tcp_server, udp_server) = net.ns.run(|| {
        let t = TcpListener::bind((net.peer_ip, 0)).unwrap();
        let u = UdpSocket::bind((net.peer_ip, 0)).unwrap();
        (t, u)
    });
    let tcp_addr = tcp_server.local_addr().unwrap();
    let udp_addr = udp_server.local_addr().unwrap();
    let echo_tcp = thread::spawn(move || {
        let (mut s, _) = tcp_server.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    udp_server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let echo_udp = thread::spawn(move || {
        let mut buf = [0u8; 16];
        let (n, from) = udp_server.recv_from(&mut buf).unwrap();
        udp_server.send_to(&buf[..n], from).unwrap();
    });
    let host_listener = TcpListener::bind((net.host_ip, 0)).unwrap();
    let unsolicited = host_listener.local_addr().unwrap();

    let policy = PolicyFile::new(&format!(
        "mode = \"enforce\"\ninterfaces = [\"{}\"]\ndefault = \"deny\"\nfailsafe_ports = []\n",
        net.host_if
    ));
    let daemon = Daemon::start(&["--policy", policy.arg()]);

    let mut s = TcpStream::connect_timeout(&tcp_addr, Duration::from_secs(3))
        .expect("the host's own connection works");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).expect("the reply data arrives");
    assert_eq!(&back, b"hello");
    echo_tcp.join().unwrap();

    let u = UdpSocket::bind((net.host_ip, 0)).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    u.send_to(b"query", udp_addr).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = u.recv_from(&mut buf).expect("the UDP answer arrives");
    assert_eq!((&buf[..n], from), (&b"query"[..], udp_addr));
    echo_udp.join().unwrap();

    assert_eq!(
        net.connect(unsolicited, Duration::from_millis(1500)),
        Err(ErrorKind::TimedOut),
        "unsolicited connections are still dropped"
    );
    let stats = daemon.dirs.stats();
    assert!(
        rule_packets(&stats, "reply") >= 3,
        "SYN-ACK, data, UDP answer: {stats}"
    );
    assert_eq!(
        reason_packets(&stats, "reply_passed"),
        rule_packets(&stats, "reply")
    );
    assert!(rule_packets(&stats, "default") >= 1, "{stats}");
}

#[test]
fn deny_events_are_json_lines_and_a_flood_stays_bounded() {
    let net = TestNet::new();
    let target = UdpSocket::bind((net.host_ip, 0)).unwrap();
    let denied = target.local_addr().unwrap();
    let policy = PolicyFile::new(&format!(
        "mode = \"enforce\"\ninterfaces = [\"{}\"]\nfailsafe_ports = []\n[events]\nrate_per_second = 2\nburst = 3\n",
        net.host_if
    ));
    let mut daemon = Daemon::start(&["--policy", policy.arg(), "--log-format", "json"]);
    let started = Instant::now();
    let flood = 2000;
    let peer = net.peer_ip;
    net.ns.run(|| {
        let s = UdpSocket::bind((peer, 0)).unwrap();
        for _ in 0..flood {
            s.send_to(b"flood", denied).unwrap();
        }
    });
    thread::sleep(Duration::from_millis(300));
    let stats = daemon.dirs.stats();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(daemon.stop().success());

    let log = daemon.log_text();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "guard::event" && v["kind"] == "drop")
        .collect();
    // Burst 3, then 2 per second.
    let bound = 3 + (2.0 * elapsed).ceil() as usize;
    assert!(
        !events.is_empty() && events.len() <= bound,
        "{} events for a flood of {flood} in {elapsed:.1}s:\n{log}",
        events.len()
    );
    for e in &events {
        assert_eq!(
            (e["kind"].as_str(), e["proto"].as_str(), e["rule"].as_str()),
            (Some("drop"), Some("udp"), Some("default")),
            "{e}"
        );
        assert_eq!(e["src"].as_str(), Some(net.peer_ip.to_string().as_str()));
        assert_eq!(e["dst"].as_str(), Some(net.host_ip.to_string().as_str()));
        assert_eq!(e["dport"].as_u64(), Some(u64::from(denied.port())));
        assert!(e["ts"].as_f64().is_some_and(|t| t > 1.0e9), "{e}");
    }
    let ev = &stats["events"];
    assert_eq!(rule_packets(&stats, "default"), flood, "{stats}");
    assert_eq!(
        ev["sent"].as_u64().unwrap()
            + ev["suppressed"].as_u64().unwrap()
            + ev["lost"].as_u64().unwrap(),
        flood,
        "{stats}"
    );
    assert!(
        ev["suppressed"].as_u64().unwrap() >= flood - bound as u64,
        "{stats}"
    );
}
