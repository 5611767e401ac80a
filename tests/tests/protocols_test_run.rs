//! Tier 2: every IP protocol is judged (issue K-1), through BPF_PROG_TEST_RUN. UDP-Lite is
//! judged as UDP; SCTP, DCCP, GRE, ESP and any other protocol fall to the policy default
//! unless a rule names them; ICMP and ICMPv6 control messages always pass and echo requests
//! follow `icmp_echo`. Nothing is attached anywhere.

use std::net::{Ipv4Addr, Ipv6Addr};

use guard_tests::{
    kernel::{XDP_DROP, XDP_PASS, load},
    packets::*,
};

fn host4() -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 1)
}
fn peer4() -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 7, 9)
}
fn outsider4() -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 1, 1)
}
fn host6() -> Ipv6Addr {
    "2001:db8::1".parse().unwrap()
}
fn outsider6() -> Ipv6Addr {
    "2001:db8:ffff::9".parse().unwrap()
}

/// UDP-Lite (136) with ports like UDP.
fn udplite(dport: u16) -> L4 {
    let mut bytes = vec![0u8; 8];
    bytes[0..2].copy_from_slice(&40000u16.to_be_bytes());
    bytes[2..4].copy_from_slice(&dport.to_be_bytes());
    bytes[5] = 8; // checksum coverage
    bytes.extend_from_slice(b"lite");
    L4::Other { proto: 136, bytes }
}

/// A protocol without ports in guard's model, with a few payload bytes.
fn other(proto: u8) -> L4 {
    L4::Other {
        proto,
        bytes: vec![0x11; 24],
    }
}

fn icmp(proto: u8, icmp_type: u8) -> L4 {
    L4::Other {
        proto,
        bytes: vec![icmp_type, 0, 0, 0, 0, 1, 0, 1],
    }
}

fn v4(src: Ipv4Addr, l4: &L4) -> Vec<u8> {
    ipv4(src, host4(), 0, (0, false), l4)
}

const DENY: &str = r#"
mode = "enforce"
interfaces = ["unused0"]
default = "deny"
failsafe_ports = []
[zones]
peers = ["198.18.7.0/24"]
[[ingress]]
name = "syslog"
proto = "udp"
ports = [514]
[[ingress]]
name = "gre-peers"
proto = "gre"
from = ["peers"]
[[ingress]]
name = "esp"
proto = "50"
"#;

#[test]
fn udplite_is_judged_as_udp() {
    let g = load(DENY);
    assert_eq!(g.verdict(&v4(outsider4(), &udplite(514))), XDP_PASS);
    assert_eq!(g.verdict(&v4(outsider4(), &udplite(515))), XDP_DROP);
    assert_eq!(
        g.verdict(&ipv6(outsider6(), host6(), &[], &udplite(9))),
        XDP_DROP
    );
    assert_eq!(g.packets("syslog"), 1);
    assert_eq!(g.packets("default"), 2);
    // A UDP-Lite datagram cut inside its header is malformed, like UDP's.
    let cut = v4(outsider4(), &udplite(514));
    assert_eq!(g.verdict(&cut[..IP_OFFSET + 20 + 6]), XDP_DROP);
    assert_eq!(g.counters().reason("malformed"), 1);
}

#[test]
fn every_other_protocol_falls_to_the_default_unless_a_rule_names_it() {
    let g = load(DENY);
    // SCTP, DCCP, IPIP, OSPF, an unassigned number, IPv6 "no next header": dropped.
    for proto in [132, 33, 4, 89, 253, 59] {
        assert_eq!(
            g.verdict(&v4(outsider4(), &other(proto))),
            XDP_DROP,
            "IPv4 protocol {proto}"
        );
        assert_eq!(
            g.verdict(&ipv6(outsider6(), host6(), &[], &other(proto))),
            XDP_DROP,
            "IPv6 protocol {proto}"
        );
    }
    assert_eq!(g.packets("default"), 12);
    // GRE from the peers' zone only; ESP (by number) from anywhere.
    assert_eq!(g.verdict(&v4(peer4(), &other(47))), XDP_PASS);
    assert_eq!(g.verdict(&v4(outsider4(), &other(47))), XDP_DROP);
    assert_eq!(g.verdict(&v4(outsider4(), &other(50))), XDP_PASS);
    assert_eq!(
        g.verdict(&ipv6(outsider6(), host6(), &[Ext::DestOpts(0)], &other(50))),
        XDP_PASS
    );
    assert_eq!(g.packets("gre-peers"), 1);
    assert_eq!(g.packets("esp"), 2);
    assert_eq!(g.packets("default"), 13);
    assert_eq!(g.counters().reason("policy"), 13);
}

#[test]
fn later_fragments_of_other_protocols_are_judged_by_protocol() {
    let g = load(DENY);
    // A later fragment of GRE from an outsider: dropped (no ports needed to judge it).
    let frag = ipv4(outsider4(), host4(), 0, (100, false), &other(47));
    assert_eq!(g.verdict(&frag), XDP_DROP);
    let frag = ipv4(peer4(), host4(), 0, (100, false), &other(47));
    assert_eq!(g.verdict(&frag), XDP_PASS);
    let frag6 = ipv6(
        outsider6(),
        host6(),
        &[Ext::Fragment(50, false)],
        &other(132),
    );
    assert_eq!(g.verdict(&frag6), XDP_DROP);
    // Later fragments of UDP-Lite carry no ports: passed like UDP's.
    let frag = ipv4(outsider4(), host4(), 0, (100, false), &udplite(9));
    assert_eq!(g.verdict(&frag), XDP_PASS);
    let c = g.counters();
    assert_eq!(c.reason("fragment_passed"), 1);
    assert_eq!(
        (c.rule("gre-peers").unwrap().packets, c.reason("policy")),
        (1, 2)
    );
}

#[test]
fn icmp_control_always_passes_and_echo_follows_icmp_echo() {
    let g = load(DENY);
    // Default `icmp_echo = ["any"]`: echo requests pass, counted under `icmp-echo`.
    assert_eq!(g.verdict(&v4(outsider4(), &icmp(1, 8))), XDP_PASS);
    assert_eq!(
        g.verdict(&ipv6(outsider6(), host6(), &[], &icmp(58, 128))),
        XDP_PASS
    );
    assert_eq!(g.packets("icmp-echo"), 2);

    let text = DENY.replace(
        "failsafe_ports = []",
        "failsafe_ports = []\nicmp_echo = [\"peers\"]",
    );
    let g = load(&text);
    assert_eq!(g.verdict(&v4(peer4(), &icmp(1, 8))), XDP_PASS);
    assert_eq!(g.verdict(&v4(outsider4(), &icmp(1, 8))), XDP_DROP);
    assert_eq!(
        g.verdict(&ipv6(outsider6(), host6(), &[], &icmp(58, 128))),
        XDP_DROP
    );
    // Errors, path MTU, neighbour discovery and echo replies pass whatever the policy.
    for (proto, icmp_type) in [
        (1, 3),
        (1, 11),
        (1, 0),
        (58, 1),
        (58, 2),
        (58, 129),
        (58, 133),
        (58, 135),
        (58, 136),
    ] {
        let packet = if proto == 1 {
            v4(outsider4(), &icmp(1, icmp_type))
        } else {
            ipv6(outsider6(), host6(), &[], &icmp(58, icmp_type))
        };
        assert_eq!(
            g.verdict(&packet),
            XDP_PASS,
            "ICMP {proto} type {icmp_type}"
        );
    }
    let c = g.counters();
    assert_eq!(c.reason("icmp_control"), 9);
    assert_eq!(
        (
            c.rule("icmp-echo").unwrap().packets,
            c.rule("default").unwrap().packets
        ),
        (1, 2)
    );

    let g = load(&DENY.replace("failsafe_ports = []", "failsafe_ports = []\nicmp_echo = []"));
    assert_eq!(g.verdict(&v4(peer4(), &icmp(1, 8))), XDP_DROP);
    assert_eq!(g.verdict(&v4(peer4(), &icmp(1, 0))), XDP_PASS);
}

#[test]
fn audit_mode_passes_other_protocols_and_counts_them() {
    let g = load(&DENY.replace("mode = \"enforce\"", "mode = \"audit\""));
    assert_eq!(g.verdict(&v4(outsider4(), &other(132))), XDP_PASS);
    assert_eq!(g.verdict(&v4(outsider4(), &udplite(9))), XDP_PASS);
    let c = g.counters();
    let default = c.rule("default").unwrap();
    assert_eq!((default.packets, default.action.as_str()), (2, "audit"));
}

#[test]
fn ipv6_packets_from_ipv4_mapped_sources_are_dropped() {
    let g = load(DENY);
    let mapped: Ipv6Addr = "::ffff:198.18.7.9".parse().unwrap();
    // Even to an allowed port: no host sends these; the kernel's IPv6 stack drops them too.
    let l4 = L4::Udp {
        sport: 40000,
        dport: 514,
        payload: b"x".to_vec(),
    };
    assert_eq!(g.verdict(&ipv6(mapped, host6(), &[], &l4)), XDP_DROP);
    assert_eq!(g.counters().reason("malformed"), 1);
}

#[test]
fn bytes_are_counted_to_the_end_of_the_ip_packet() {
    let g = load(DENY);
    let l4 = L4::Udp {
        sport: 40000,
        dport: 514,
        payload: b"syslog".to_vec(),
    };
    let packet = v4(outsider4(), &l4);
    let mut padded = packet.clone();
    padded.extend_from_slice(&[0u8; 1000]);
    assert_eq!(g.verdict(&padded), XDP_PASS);
    let packet6 = ipv6(outsider6(), host6(), &[], &l4);
    let mut padded6 = packet6.clone();
    padded6.extend_from_slice(&[0u8; 500]);
    assert_eq!(g.verdict(&padded6), XDP_PASS);
    let syslog = g.counters().rule("syslog").unwrap().clone();
    assert_eq!(
        (syslog.packets, syslog.bytes),
        (2, (packet.len() + packet6.len()) as u64),
        "trailing bytes beyond the IP length are not counted"
    );
}
