//! Tier 3: cgroup programs with real sockets in a child cgroup the test creates: the
//! `[listen]` bind allowlist (IPv4/IPv6, TCP/UDP), audit mode, sock_ops connection counts
//! and RTT histograms, and attach/detach leaving nothing behind.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use guard_tests::{Daemon, Dirs, PolicyFile, TestNet, policies, rule_packets, unique};

const EPERM: i32 = 1;

/// A port that is free right now on loopback (for both protocols, as far as we can tell).
fn free_port() -> u16 {
    loop {
        let t = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, i32> {
    TcpListener::bind(addr).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, i32> {
    UdpSocket::bind(addr).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// A policy with no interface of the host's: one veth the test makes.
fn policy(net: &TestNet, extra: &str) -> PolicyFile {
    PolicyFile::new(&(policies::head_with_failsafe(&net.host_if, "enforce", "allow") + extra))
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn listen_allowlist_denies_other_binds_with_eperm() {
    let net = TestNet::new();
    let (tcp_only, udp_only, both, other) = (free_port(), free_port(), free_port(), free_port());
    let policy = policy(
        &net,
        &format!("[listen]\nallow = [{both}]\ntcp = [{tcp_only}]\nudp = [{udp_only}]\n"),
    );
    let mut daemon = Daemon::start(&["--policy", policy.arg()]);
    let v4 = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let v6 = |p| SocketAddr::from((Ipv6Addr::LOCALHOST, p));
    daemon.cgroup.run(|| {
        assert!(bind_tcp(v4(tcp_only)).is_ok());
        assert!(bind_tcp(v6(tcp_only)).is_ok());
        assert_eq!(
            bind_udp(v4(tcp_only)).err(),
            Some(EPERM),
            "tcp-only port, udp socket"
        );
        assert!(bind_udp(v4(udp_only)).is_ok());
        assert!(bind_udp(v6(udp_only)).is_ok());
        assert_eq!(
            bind_tcp(v4(udp_only)).err(),
            Some(EPERM),
            "udp-only port, tcp socket"
        );
        assert!(bind_tcp(v4(both)).is_ok() && bind_udp(v4(both)).is_ok());
        assert_eq!(bind_tcp(v4(other)).err(), Some(EPERM));
        assert_eq!(bind_tcp(v6(other)).err(), Some(EPERM));
        assert_eq!(bind_udp(v4(other)).err(), Some(EPERM));
        assert_eq!(bind_udp(v6(other)).err(), Some(EPERM));
        // Port 0 (kernel-chosen) and clients that never bind are not affected.
        let l = bind_tcp(v4(0)).expect("port 0 is always allowed");
        assert!(bind_udp(v6(0)).is_ok());
        let addr = l.local_addr().unwrap();
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .expect("a client socket connects");
    });
    // Outside the cgroup nothing is enforced.
    assert!(bind_tcp(v4(other)).is_ok());

    let stats = daemon.dirs.stats();
    let denied: Vec<(String, u64, u64)> = stats["bind_denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["proto"].as_str().unwrap().to_owned(),
                b["port"].as_u64().unwrap(),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = vec![
        ("tcp".to_owned(), u64::from(udp_only), 1),
        ("tcp".to_owned(), u64::from(other), 2),
        ("udp".to_owned(), u64::from(tcp_only), 1),
        ("udp".to_owned(), u64::from(other), 2),
    ];
    want.sort();
    assert_eq!(denied, want, "{stats}");
    assert!(daemon.stop().success());
    let log = daemon.log_text();
    let pid = std::process::id().to_string();
    assert!(
        log.lines().any(|l| l.contains("bind_denied")
            && l.contains(&format!("port={other}"))
            && l.contains(&format!("pid={pid}"))),
        "bind denials are events with pid and port:\n{log}"
    );
}

#[test]
fn audit_mode_allows_binds_and_reports_them() {
    let net = TestNet::new();
    let other = free_port();
    let policy = PolicyFile::new(&format!(
        "mode = \"audit\"\ninterfaces = [\"{}\"]\n[listen]\nallow = [22]\n",
        net.host_if
    ));
    let mut daemon = Daemon::start(&["--policy", policy.arg()]);
    daemon.cgroup.run(|| {
        assert!(
            bind_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, other))).is_ok(),
            "audit mode denies nothing"
        );
    });
    let stats = daemon.dirs.stats();
    assert_eq!(
        stats["bind_denied"][0]["count"].as_u64(),
        Some(1),
        "{stats}"
    );
    assert!(daemon.stop().success());
    let log = daemon.log_text();
    assert!(
        log.contains("bind_denied (audit: allowed)") && log.contains("audit=true"),
        "{log}"
    );
}

#[test]
fn sock_ops_counts_connections_and_fills_the_rtt_histogram() {
    let net = TestNet::new();
    let policy = policy(&net, "");
    let daemon = Daemon::start(&["--policy", policy.arg()]);
    let (port, kept) = daemon.cgroup.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let mut accepted = Vec::new();
            for _ in 0..7 {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).unwrap();
                s.write_all(&buf).unwrap();
                accepted.push(s);
            }
            accepted
        });
        let mut clients = Vec::new();
        for _ in 0..7 {
            let mut c = TcpStream::connect(addr).unwrap();
            for _ in 0..3 {
                c.write_all(b"ping").unwrap();
            }
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).unwrap();
            clients.push(c);
        }
        let mut accepted = server.join().unwrap();
        // Close 5 of the 7 connections on both ends; keep 2 open.
        for _ in 0..5 {
            drop(clients.pop());
            drop(accepted.pop());
        }
        (addr.port(), (clients, accepted))
    });
    let conn = |stats: &serde_json::Value, dir: &str| {
        stats["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["direction"] == dir && c["port"] == port)
            .cloned()
    };
    wait_for("5 closes counted in both directions", || {
        let stats = daemon.dirs.stats();
        ["inbound", "outbound"]
            .iter()
            .all(|d| conn(&stats, d).is_some_and(|c| c["closed"] == 5))
    });
    let stats = daemon.dirs.stats();
    for dir in ["inbound", "outbound"] {
        let c = conn(&stats, dir).unwrap();
        assert_eq!(
            (
                c["established"].as_u64(),
                c["active"].as_u64(),
                c["closed"].as_u64()
            ),
            (Some(7), Some(2), Some(5)),
            "{dir}: {c}"
        );
    }
    let hist: u64 = conn(&stats, "inbound").unwrap()["rtt_log2_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(hist >= 7, "RTT samples of the inbound connections: {stats}");
    drop(kept);
    wait_for("every connection closed", || {
        let stats = daemon.dirs.stats();
        conn(&stats, "inbound").is_some_and(|c| c["active"] == 0)
    });
}

#[test]
fn xdp_attempts_and_sock_ops_accepts_agree() {
    let net = TestNet::new();
    let policy = PolicyFile::new(&format!(
        "mode = \"enforce\"\ninterfaces = [\"{}\"]\ndefault = \"deny\"\nfailsafe_ports = []\n[[ingress]]\nname = \"svc\"\nproto = \"tcp\"\nports = [PORT]\n",
        net.host_if
    ));
    // The listener is made first (in the cgroup) so the policy can name its port.
    let daemon_cgroup_listener = {
        let probe = TcpListener::bind((net.host_ip, 0)).unwrap();
        probe.local_addr().unwrap().port()
    };
    let text = std::fs::read_to_string(&policy.path)
        .unwrap()
        .replace("PORT", &daemon_cgroup_listener.to_string());
    std::fs::write(&policy.path, text).unwrap();
    let daemon = Daemon::start(&["--policy", policy.arg()]);
    let listener = daemon
        .cgroup
        .run(|| TcpListener::bind((net.host_ip, daemon_cgroup_listener)).unwrap());
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        (0..4)
            .map(|_| listener.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    for _ in 0..4 {
        assert_eq!(net.connect(addr, Duration::from_secs(3)), Ok(()));
    }
    let accepted = server.join().unwrap();
    wait_for("4 inbound connections established", || {
        let stats = daemon.dirs.stats();
        stats["connections"].as_array().unwrap().iter().any(|c| {
            c["direction"] == "inbound" && c["port"] == addr.port() && c["established"] == 4
        })
    });
    let stats = daemon.dirs.stats();
    let port = stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["proto"] == "tcp" && p["port"] == addr.port().to_string().as_str())
        .unwrap();
    assert_eq!(
        port["attempted"].as_u64(),
        Some(4),
        "XDP saw 4 SYNs: {stats}"
    );
    assert_eq!(port["rejected"].as_u64(), Some(0));
    assert!(rule_packets(&stats, "svc") >= 4);
    drop(accepted);
}

#[test]
fn attach_and_detach_leave_nothing_behind() {
    let net = TestNet::new();
    let policy = policy(&net, "[listen]\nallow = [22]\n");
    let mut daemon = Daemon::start(&["--policy", policy.arg()]);
    let attached = daemon.cgroup.attached_programs();
    for name in ["guard_bind4", "guard_bind6", "guard_sock_ops"] {
        assert!(
            attached.contains(name),
            "{name} attached to the test cgroup:\n{attached}"
        );
    }
    assert!(net.has_xdp());
    assert!(daemon.stop().success());
    assert!(
        daemon.cgroup.attached_programs().contains("guard_bind4"),
        "stopping keeps enforcement"
    );
    assert!(net.has_xdp());
    assert!(daemon.unload().status.success());
    assert_eq!(
        daemon
            .cgroup
            .attached_programs()
            .lines()
            .filter(|l| l.contains("guard_"))
            .count(),
        0,
        "cgroup programs detached"
    );
    assert!(!net.has_xdp());
    let progs =
        String::from_utf8_lossy(&guard_tests::sh(&["bpftool", "prog", "show"]).stdout).into_owned();
    assert!(
        !progs.contains("guard_bind4") && !progs.contains("guard_sock_ops"),
        "programs unloaded:\n{progs}"
    );
}

#[test]
fn a_cgroup_that_is_not_cgroup_v2_is_rejected_and_nothing_attached() {
    let net = TestNet::new();
    let dirs = Dirs::new();
    let policy = policy(&net, "");
    let not_cgroup = std::env::temp_dir().join(unique("not-a-cgroup-"));
    std::fs::create_dir(&not_cgroup).unwrap();
    let out = dirs
        .guard()
        .args([
            "run",
            "--policy",
            policy.arg(),
            "--cgroup",
            not_cgroup.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&not_cgroup);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a cgroup v2 directory") && err.contains(not_cgroup.to_str().unwrap()),
        "{err}"
    );
    assert!(!net.has_xdp(), "nothing attached");
}

fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, i32> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[test]
fn egress_rules_deny_connect_and_sendmsg_with_eperm() {
    let net = TestNet::new();
    let db4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let db6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
    let web = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let (db4, db6, web) = (
        db4.local_addr().unwrap(),
        db6.local_addr().unwrap(),
        web.local_addr().unwrap(),
    );
    let udp_target = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let udp_other = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let policy = policy(
        &net,
        &format!(
            "[zones]\nlocal = [\"127.0.0.0/8\", \"::1/128\"]\n\
             [[egress]]\nname = \"no-db\"\nproto = \"tcp\"\nports = [{}, {}]\nto = [\"local\"]\naction = \"deny\"\n\
             [[egress]]\nname = \"no-udp\"\nproto = \"udp\"\nports = [{}]\naction = \"deny\"\n",
            db4.port(),
            db6.port(),
            udp_target.port()
        ),
    );
    let mut daemon = Daemon::start(&["--policy", policy.arg()]);
    daemon.cgroup.run(|| {
        assert_eq!(
            connect_tcp(db4).err(),
            Some(EPERM),
            "IPv4 TCP connect to a denied port"
        );
        assert_eq!(
            connect_tcp(db6).err(),
            Some(EPERM),
            "IPv6 TCP connect to a denied port"
        );
        assert!(
            connect_tcp(web).is_ok(),
            "other destinations are allowed (egress default)"
        );
        let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(
            u.send_to(b"x", udp_target)
                .map_err(|e| e.raw_os_error())
                .err(),
            Some(Some(EPERM)),
            "UDP sendmsg"
        );
        assert!(u.send_to(b"x", udp_other).is_ok());
        assert_eq!(
            u.connect(udp_target).map_err(|e| e.raw_os_error()).err(),
            Some(Some(EPERM)),
            "UDP connect"
        );
    });
    assert!(
        connect_tcp(db4).is_ok(),
        "outside the cgroup nothing is enforced"
    );
    let stats = daemon.dirs.stats();
    assert_eq!(rule_packets(&stats, "no-db"), 2, "{stats}");
    assert_eq!(rule_packets(&stats, "no-udp"), 2, "{stats}");
    assert!(rule_packets(&stats, "egress-default") >= 2, "{stats}");
    assert!(daemon.stop().success());
    let log = daemon.log_text();
    let pid = std::process::id();
    assert!(
        log.lines().any(|l| l.contains("connect_denied")
            && l.contains("rule=\"no-db\"")
            && l.contains(&format!("dport={}", db4.port()))
            && l.contains(&format!("pid={pid}"))),
        "{log}"
    );
}

#[test]
fn egress_audit_rules_allow_and_report() {
    let net = TestNet::new();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let target = listener.local_addr().unwrap();
    let policy = policy(
        &net,
        &format!(
            "[[egress]]\nname = \"trial\"\nproto = \"tcp\"\nports = [{}]\naction = \"audit\"\n",
            target.port()
        ),
    );
    let mut daemon = Daemon::start(&["--policy", policy.arg()]);
    daemon
        .cgroup
        .run(|| assert!(connect_tcp(target).is_ok(), "an audit rule denies nothing"));
    assert_eq!(rule_packets(&daemon.dirs.stats(), "trial"), 1);
    assert!(daemon.stop().success());
    let log = daemon.log_text();
    assert!(
        log.contains("connect_denied (audit: allowed)") && log.contains("rule=\"trial\""),
        "{log}"
    );
}

/// A socket of `family`, `kind` and `protocol` (raw libc: std has no UDP-Lite or TFO).
fn raw_socket(family: i32, kind: i32, protocol: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new, valid fd.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// A `sockaddr_storage` for `addr` (IPv6 addresses as given, so `::ffff:a.b.c.d` stays
/// IPv4-mapped) and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// 0 or the errno of one socket call.
fn errno_of(ret: isize) -> i32 {
    if ret < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

fn raw_bind(fd: &std::os::fd::OwnedFd, addr: SocketAddr) -> i32 {
    use std::os::fd::AsRawFd as _;
    let (ss, len) = sockaddr(addr);
    // SAFETY: a valid fd and sockaddr of `len` bytes.
    errno_of(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    } as isize)
}

fn raw_connect(fd: &std::os::fd::OwnedFd, addr: SocketAddr) -> i32 {
    use std::os::fd::AsRawFd as _;
    let (ss, len) = sockaddr(addr);
    // SAFETY: as in raw_bind.
    errno_of(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    } as isize)
}

fn raw_sendto(fd: &std::os::fd::OwnedFd, addr: SocketAddr, flags: i32) -> i32 {
    use std::os::fd::AsRawFd as _;
    let (ss, len) = sockaddr(addr);
    let data = b"x";
    // SAFETY: as in raw_bind, with a one-byte buffer.
    errno_of(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            flags,
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    })
}

/// Issue K-1 and K-2 at the socket hooks: UDP-Lite sockets are judged as UDP by `[listen]`,
/// and IPv4-mapped IPv6 destinations are judged by the IPv4 rules (connect and TCP Fast
/// Open).
#[test]
fn udplite_binds_and_ipv4_mapped_tcp_destinations_are_judged() {
    let net = TestNet::new();
    let (allowed, other) = (free_port(), free_port());
    let db = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let db = db.local_addr().unwrap();
    let policy = policy(
        &net,
        &format!(
            "[zones]\nlocal4 = [\"127.0.0.0/8\"]\n\
             [[egress]]\nname = \"no-db\"\nproto = \"tcp\"\nports = [{}]\nto = [\"local4\"]\naction = \"deny\"\n\
             [listen]\nallow = [{allowed}]\n",
            db.port(),
        ),
    );
    let mut daemon = Daemon::start(&["--policy", policy.arg()]);
    daemon.cgroup.run(|| {
        let lite4 = || raw_socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE);
        let lite6 = || raw_socket(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE);
        assert_eq!(
            raw_bind(&lite4(), v4(other)),
            EPERM,
            "UDP-Lite bind outside [listen]"
        );
        assert_eq!(
            raw_bind(&lite6(), v6(other)),
            EPERM,
            "UDP-Lite v6 bind outside [listen]"
        );
        assert_eq!(
            raw_bind(&lite4(), v4(allowed)),
            0,
            "UDP-Lite bind inside [listen]"
        );
        let tcp6 = || raw_socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
        assert_eq!(
            raw_connect(&tcp6(), mapped(db.port())),
            EPERM,
            "mapped TCP connect"
        );
        assert_eq!(
            raw_sendto(&tcp6(), mapped(db.port()), libc::MSG_FASTOPEN),
            EPERM,
            "mapped TCP Fast Open"
        );
        // Control: a mapped destination the rules do not name is allowed.
        let web = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(
            raw_connect(&tcp6(), mapped(web.local_addr().unwrap().port())),
            0
        );
    });
    let stats = daemon.dirs.stats();
    assert_eq!(rule_packets(&stats, "no-db"), 2, "{stats}");
    assert!(daemon.stop().success());
    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("bind_denied")
            && l.contains(&format!("port={other}"))
            && l.contains("proto=\"udplite\"")),
        "UDP-Lite bind denials are events naming the protocol:\n{log}"
    );
}

/// Issue K-1 and K-2 for UDP: IPv4-mapped destinations are judged by the IPv4 rules; and
/// since the kernel runs no connect hook for UDP-Lite, a policy whose `[[egress]]` denies UDP
/// destinations denies creating UDP-Lite sockets in the cgroup.
#[test]
fn udp_egress_rules_hold_for_ipv4_mapped_destinations_and_udplite() {
    let net = TestNet::new();
    let udp_target = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let udp_target = udp_target.local_addr().unwrap();
    let policy = policy(
        &net,
        &format!(
            "[zones]\nlocal4 = [\"127.0.0.0/8\"]\n\
             [[egress]]\nname = \"no-udp\"\nproto = \"udp\"\nports = [{}]\nto = [\"local4\"]\naction = \"deny\"\n",
            udp_target.port(),
        ),
    );
    let mut daemon = Daemon::start(&["--policy", policy.arg()]);
    daemon.cgroup.run(|| {
        let udp6 = || raw_socket(libc::AF_INET6, libc::SOCK_DGRAM, 0);
        assert_eq!(
            raw_sendto(&udp6(), mapped(udp_target.port()), 0),
            EPERM,
            "mapped UDP sendto"
        );
        assert_eq!(
            raw_connect(&udp6(), mapped(udp_target.port())),
            EPERM,
            "mapped UDP connect"
        );
        let other = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(
            raw_sendto(&udp6(), mapped(other.local_addr().unwrap().port()), 0),
            0
        );
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) };
        let err = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (fd, err),
            (-1, Some(EPERM)),
            "UDP-Lite socket() under a UDP egress deny"
        );
    });
    let stats = daemon.dirs.stats();
    assert_eq!(rule_packets(&stats, "no-udp"), 2, "{stats}");
    assert!(daemon.stop().success());
    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("connect_denied") && l.contains("proto=\"udplite\"")),
        "the refused UDP-Lite socket is an event:\n{log}"
    );
}

fn mapped(port: u16) -> SocketAddr {
    SocketAddr::from(("::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap(), port))
}
fn v4(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, port))
}

/// Issue K-12: what bind-time enforcement cannot stop is made visible. A listener on an
/// ephemeral port (listen() without bind(), or bind to port 0) and a socket created outside
/// the cgroup then bound inside it get past the bind hook; the daemon's listener audit
/// reports both as unexpected within one `[health]` tick, with their process. The daemon's
/// own metrics listener is not reported.
#[test]
fn listeners_the_bind_hook_cannot_stop_are_reported_within_a_tick() {
    use std::os::fd::AsRawFd as _;
    let net = TestNet::new();
    let (allowed, other) = (free_port(), free_port());
    let policy = policy(
        &net,
        &format!("[listen]\nallow = [{allowed}]\n[health]\ninterval_seconds = 1\n"),
    );
    let daemon = Daemon::start(&["--policy", policy.arg()]);
    // Created here, outside the daemon's cgroup: the cgroup's bind hook never sees it.
    let outside = raw_socket(libc::AF_INET, libc::SOCK_STREAM, 0);
    let ephemeral = daemon.cgroup.run(|| {
        // listen() without bind(): the kernel picks a port; no bind hook runs.
        let fd = raw_socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        // SAFETY: a valid socket.
        assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 1) }, 0);
        assert_eq!(
            raw_bind(&outside, v4(other)),
            0,
            "the bind hook does not see it"
        );
        // SAFETY: a valid, bound socket.
        assert_eq!(unsafe { libc::listen(outside.as_raw_fd(), 1) }, 0);
        fd
    });
    let port_of = |fd: &std::os::fd::OwnedFd| {
        // SAFETY: all-zero is a valid sockaddr_in; getsockname fills it.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: valid fd and out-pointers.
        unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                &mut sin as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        u16::from_be(sin.sin_port)
    };
    let ephemeral_port = port_of(&ephemeral);
    let reported = |port: u16| {
        let out = daemon.dirs.guard().args(["events"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains("unexpected_listener") && l.contains(&format!("\"dport\":{port}")))
    };
    wait_for("the ephemeral listener is reported", || {
        reported(ephemeral_port)
    });
    wait_for("the passed-in listener is reported", || reported(other));
    let metrics = daemon.metrics_addr();
    assert!(
        !reported(metrics.port()),
        "the daemon's own metrics listener is expected"
    );
    drop(outside);
}
