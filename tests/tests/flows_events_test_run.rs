//! Tier 2: replies to the host's own flows, per-port connection counters and rate-limited
//! deny events, through BPF_PROG_TEST_RUN of the XDP and TC programs.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread::sleep,
    time::Duration,
};

use guard_tests::{
    kernel::{TC_ACT_OK, XDP_DROP, XDP_PASS, load},
    packets::*,
};

const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const DNS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

const DENY_ALL: &str = r#"
mode = "enforce"
interfaces = ["unused0"]
default = "deny"
failsafe_ports = []
[[ingress]]
name = "web"
proto = "tcp"
ports = [80]
"#;

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}
fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        payload: b"x".to_vec(),
    }
}

#[test]
fn replies_to_flows_the_host_started_pass_under_default_deny() {
    let g = load(DENY_ALL);
    // Before the host sends anything, the "replies" are unsolicited: dropped.
    let dns_reply = ipv4(DNS, HOST, 0, (0, false), &udp(53, 40000));
    assert_eq!(g.verdict(&dns_reply), XDP_DROP);
    // The host sends a DNS query and opens a TCP connection (recorded on egress).
    assert_eq!(
        g.egress(&ipv4(HOST, DNS, 0, (0, false), &udp(40000, 53))),
        TC_ACT_OK
    );
    assert_eq!(
        g.egress(&ipv4(HOST, WEB, 0, (0, false), &tcp(40001, 443, TCP_SYN))),
        TC_ACT_OK
    );
    // An outbound reset opens nothing.
    assert_eq!(
        g.egress(&ipv4(
            HOST,
            WEB,
            0,
            (0, false),
            &tcp(40002, 443, TCP_RST | TCP_ACK)
        )),
        TC_ACT_OK
    );

    let cases = [
        (
            "dns reply",
            ipv4(DNS, HOST, 0, (0, false), &udp(53, 40000)),
            XDP_PASS,
        ),
        (
            "reply from another host",
            ipv4(WEB, HOST, 0, (0, false), &udp(53, 40000)),
            XDP_DROP,
        ),
        (
            "reply from another port",
            ipv4(DNS, HOST, 0, (0, false), &udp(54, 40000)),
            XDP_DROP,
        ),
        (
            "tcp to the dns flow's port",
            ipv4(DNS, HOST, 0, (0, false), &tcp(53, 40000, TCP_ACK)),
            XDP_DROP,
        ),
        (
            "syn-ack",
            ipv4(
                WEB,
                HOST,
                0,
                (0, false),
                &tcp(443, 40001, TCP_SYN | TCP_ACK),
            ),
            XDP_PASS,
        ),
        (
            "ack",
            ipv4(WEB, HOST, 0, (0, false), &tcp(443, 40001, TCP_ACK)),
            XDP_PASS,
        ),
        (
            "syn is never a reply",
            ipv4(WEB, HOST, 0, (0, false), &tcp(443, 40001, TCP_SYN)),
            XDP_DROP,
        ),
        (
            "after an outbound reset",
            ipv4(WEB, HOST, 0, (0, false), &tcp(443, 40002, TCP_ACK)),
            XDP_DROP,
        ),
    ];
    for (name, packet, want) in &cases {
        assert_eq!(g.verdict(packet), *want, "{name}");
    }
    let c = g.counters();
    assert_eq!(c.rule("reply").unwrap().packets, 3);
    assert_eq!(c.reason("reply_passed"), 3);
    assert_eq!(c.rule("default").unwrap().packets, 6);

    // IPv6 too.
    let host6: Ipv6Addr = "fd00::1".parse().unwrap();
    let peer6: Ipv6Addr = "2001:db8::53".parse().unwrap();
    assert_eq!(
        g.egress(&ipv6(host6, peer6, &[], &udp(40100, 53))),
        TC_ACT_OK
    );
    assert_eq!(
        g.verdict(&ipv6(peer6, host6, &[], &udp(53, 40100))),
        XDP_PASS
    );
    assert_eq!(
        g.verdict(&ipv6(peer6, host6, &[], &udp(53, 40101))),
        XDP_DROP
    );
}

#[test]
fn replies_expire_after_the_flow_timeout() {
    let g = load(&format!("{DENY_ALL}\n[flows]\nudp_timeout_seconds = 1\n"));
    assert_eq!(
        g.egress(&ipv4(HOST, DNS, 0, (0, false), &udp(40000, 53))),
        TC_ACT_OK
    );
    let reply = ipv4(DNS, HOST, 0, (0, false), &udp(53, 40000));
    assert_eq!(g.verdict(&reply), XDP_PASS);
    sleep(Duration::from_millis(1300));
    assert_eq!(g.verdict(&reply), XDP_DROP, "the UDP flow timed out");
}

#[test]
fn port_counters_count_syns_datagrams_and_rejections() {
    let g = load(&format!(
        "{DENY_ALL}\n[[ingress]]\nname = \"dns\"\nproto = \"udp\"\nports = [53]\n"
    ));
    for _ in 0..3 {
        assert_eq!(
            g.verdict(&ipv4(WEB, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN))),
            XDP_DROP
        );
    }
    assert_eq!(
        g.verdict(&ipv4(WEB, HOST, 0, (0, false), &tcp(40000, 80, TCP_SYN))),
        XDP_PASS
    );
    assert_eq!(
        g.verdict(&ipv4(WEB, HOST, 0, (0, false), &tcp(40000, 80, TCP_ACK))),
        XDP_PASS
    );
    assert_eq!(
        g.verdict(&ipv4(WEB, HOST, 0, (0, false), &tcp(40000, 81, TCP_ACK))),
        XDP_DROP
    );
    assert_eq!(
        g.verdict(&ipv4(WEB, HOST, 0, (0, false), &udp(40000, 53))),
        XDP_PASS
    );
    assert_eq!(
        g.verdict(&ipv4(WEB, HOST, 0, (0, false), &udp(40000, 54))),
        XDP_DROP
    );
    let c = g.counters();
    let port = |proto, port| c.port(proto, port).map(|p| (p.attempted, p.rejected));
    assert_eq!(
        port("tcp", "other"),
        Some((3, 3)),
        "81 is unnamed; SYNs only, the ACK is no attempt"
    );
    assert_eq!(port("tcp", "80"), Some((1, 0)));
    assert_eq!(port("udp", "53"), Some((1, 0)));
    assert_eq!(port("udp", "other"), Some((1, 1)));
    let names: Vec<String> = c
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.proto, p.port))
        .collect();
    assert_eq!(names, ["tcp/other", "udp/other", "tcp/80", "udp/53"]);

    let audit = load(&DENY_ALL.replace("\"enforce\"", "\"audit\""));
    assert_eq!(
        audit.verdict(&ipv4(WEB, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN))),
        XDP_PASS
    );
    assert_eq!(
        audit
            .counters()
            .port("tcp", "other")
            .map(|p| (p.attempted, p.rejected)),
        Some((1, 0))
    );
}

#[test]
fn events_are_rate_limited_per_source_and_carry_the_suppressed_count() {
    let mut g = load(&format!(
        "{DENY_ALL}\n[events]\nrate_per_second = 1\nburst = 5\n"
    ));
    let a = Ipv4Addr::new(203, 0, 113, 1);
    let b = Ipv4Addr::new(203, 0, 113, 2);
    for _ in 0..50 {
        assert_eq!(
            g.verdict(&ipv4(a, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN))),
            XDP_DROP
        );
    }
    for _ in 0..3 {
        assert_eq!(
            g.verdict(&ipv4(b, HOST, 0, (0, false), &udp(40000, 9))),
            XDP_DROP
        );
    }
    let c = g.counters();
    // 5 (burst) from a, 3 from b; one more for a only if a whole second passed.
    assert!((8..=9).contains(&c.events.sent), "{:?}", c.events);
    assert_eq!(c.events.sent + c.events.suppressed, 53, "{:?}", c.events);
    assert_eq!(c.events.lost, 0);
    sleep(Duration::from_millis(1100));
    assert_eq!(
        g.verdict(&ipv4(a, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN))),
        XDP_DROP
    );

    let events = g.take_events();
    assert_eq!(events.len() as u64, g.counters().events.sent);
    let from_a: Vec<_> = events.iter().filter(|e| e.src == IpAddr::V4(a)).collect();
    let first = from_a[0];
    assert_eq!(
        (first.kind, first.rule.as_str(), first.proto.as_str()),
        ("drop", "default", "tcp")
    );
    assert_eq!(
        (first.sport, first.dport, first.dst),
        (40000, 81, IpAddr::V4(HOST))
    );
    let last = from_a.last().unwrap();
    assert_eq!(
        u64::from(last.suppressed) + from_a.len() as u64,
        51,
        "the next event reports what was held back"
    );
    assert!(
        events
            .iter()
            .filter(|e| e.src == IpAddr::V4(b))
            .all(|e| e.proto == "udp" && e.dport == 9)
    );
}

#[test]
fn audit_events_and_events_off() {
    let mut audit = load(&DENY_ALL.replace("\"enforce\"", "\"audit\""));
    assert_eq!(
        audit.verdict(&ipv4(WEB, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN))),
        XDP_PASS
    );
    let events = audit.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "audit_drop");

    let mut off = load(&format!("{DENY_ALL}\n[events]\nrate_per_second = 0\n"));
    assert_eq!(
        off.verdict(&ipv4(WEB, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN))),
        XDP_DROP
    );
    assert!(off.take_events().is_empty());
    assert_eq!(off.counters().events.sent, 0);
}

#[test]
fn a_full_ring_buffer_loses_events_and_counts_them() {
    let mut g = load(&format!(
        "{DENY_ALL}\n[events]\nrate_per_second = 1000000\nburst = 1000000\n"
    ));
    let flood = 20_000;
    assert_eq!(
        g.verdict_repeat(
            &ipv4(WEB, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN)),
            flood
        ),
        XDP_DROP
    );
    let c = g.counters().events;
    assert!(c.lost > 0, "{c:?}");
    assert_eq!(c.sent + c.lost + c.suppressed, u64::from(flood), "{c:?}");
    assert_eq!(g.take_events().len() as u64, c.sent);
}

/// Pins the calling thread to CPU 0, so every BPF_PROG_TEST_RUN below runs on one CPU (the
/// event budget is per CPU).
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
fn denies_past_the_per_cpu_budget_are_counted_as_suppressed_until_the_window_ends() {
    pin_to_cpu0();
    // The default [events] (5 per second, burst 10 per source): the budget is 256 denies per
    // CPU and 100 ms window.
    let mut g = load(DENY_ALL);
    let budget = guard_common::EVENT_BUDGET_PER_WINDOW;
    // 300 sources, one SYN each: every one is under its own limit, but only the budget's
    // worth reach the limiter in this window.
    for i in 0..300u32 {
        let src = Ipv4Addr::from(0xCB00_7100 + i);
        assert_eq!(
            g.verdict(&ipv4(src, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN))),
            XDP_DROP
        );
    }
    let c = g.counters().events;
    assert_eq!(c.sent, budget, "{c:?}");
    assert_eq!(c.sent + c.suppressed, 300, "every deny is counted: {c:?}");
    // A flood from one source in the same window: one array access each, all counted.
    assert_eq!(
        g.verdict_repeat(
            &ipv4(WEB, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN)),
            10_000
        ),
        XDP_DROP
    );
    let c = g.counters().events;
    assert_eq!(c.sent + c.suppressed, 10_300, "{c:?}");
    // The next window: events flow again. Over budget the clock is read once per
    // EVENT_BUDGET_CLOCK_EVERY denies, so at most that many go by before the window's end is
    // noticed.
    sleep(Duration::from_millis(150));
    let sent_before = c.sent;
    let every = guard_common::EVENT_BUDGET_CLOCK_EVERY as u32;
    assert_eq!(
        g.verdict_repeat(
            &ipv4(
                Ipv4Addr::new(203, 0, 113, 200),
                HOST,
                0,
                (0, false),
                &tcp(40000, 81, TCP_SYN)
            ),
            every
        ),
        XDP_DROP
    );
    let c = g.counters().events;
    assert!(c.sent > sent_before, "{c:?}");
    assert_eq!(c.sent + c.suppressed, 10_300 + u64::from(every), "{c:?}");
    assert_eq!(g.take_events().len() as u64, c.sent);
}

#[test]
fn a_reply_to_a_flow_recorded_without_its_flag_passes_once_the_flags_are_seeded() {
    // A flow in the flow map whose seen-flag is unset: what a guard before the flags, or an
    // older instance's recorder between the seeding and the switch, leaves behind.
    let mut g = load(DENY_ALL);
    let reply = ipv4(DNS, HOST, 0, (0, false), &udp(53, 40000));
    assert_eq!(
        g.egress(&ipv4(HOST, DNS, 0, (0, false), &udp(40000, 53))),
        TC_ACT_OK
    );
    assert_eq!(g.verdict(&reply), XDP_PASS, "recorded with its flag");
    g.guard.clear_flow_seen().unwrap();
    assert_eq!(
        g.verdict(&reply),
        XDP_DROP,
        "the flag gates the flow lookup: without it the reply is unsolicited"
    );
    g.guard.seed_flow_seen().unwrap();
    assert_eq!(g.verdict(&reply), XDP_PASS, "seeded from the flow map");
}

#[test]
fn a_flood_from_one_source_does_not_hold_back_another_sources_events() {
    pin_to_cpu0();
    // Default [events]: 5 per second and a burst of 10 per source, a budget of 256 denies
    // per CPU and window. One source floods 10 000 denies: after its burst the limiter
    // holds it back, and so does the per-CPU stage in front of it, without spending the
    // budget. Another source's denies in the same window are still logged.
    let mut g = load(DENY_ALL);
    let flooder = Ipv4Addr::new(203, 0, 113, 66);
    let other = Ipv4Addr::new(203, 0, 113, 77);
    assert_eq!(
        g.verdict_repeat(
            &ipv4(flooder, HOST, 0, (0, false), &tcp(40000, 81, TCP_SYN)),
            10_000
        ),
        XDP_DROP
    );
    let c = g.counters().events;
    assert_eq!(c.sent, 10, "the flooder's burst: {c:?}");
    assert_eq!(c.sent + c.suppressed, 10_000, "{c:?}");
    for _ in 0..5 {
        assert_eq!(
            g.verdict(&ipv4(other, HOST, 0, (0, false), &udp(40000, 9))),
            XDP_DROP
        );
    }
    let events = g.take_events();
    let from_other = events.iter().filter(|e| e.src == IpAddr::V4(other)).count();
    assert_eq!(from_other, 5, "every deny of the other source is logged");
    let c = g.counters().events;
    assert_eq!(c.sent + c.suppressed, 10_005, "{c:?}");
}
