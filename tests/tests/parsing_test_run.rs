//! Tier 2: the parser's reach, through BPF_PROG_TEST_RUN: VLAN and QinQ, IPv4 options,
//! IPv6 extension headers, fragments, and truncation at every header boundary.

use std::net::{Ipv4Addr, Ipv6Addr};

use guard_tests::{
    kernel::{XDP_DROP, XDP_PASS, load},
    packets::*,
};

const POLICY: &str = r#"
mode = "enforce"
interfaces = ["unused0"]
failsafe_ports = []
[zones]
lab = ["10.1.0.0/16", "fd01::/16"]
[[ingress]]
name = "web"
proto = "tcp"
ports = [80]
from = ["lab"]
[[ingress]]
name = "dns"
proto = "udp"
ports = [53]
from = ["lab"]
"#;

const LAB4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const HOST4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const OUT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn lab6() -> Ipv6Addr {
    "fd01::7".parse().unwrap()
}
fn out6() -> Ipv6Addr {
    "2001:db8::7".parse().unwrap()
}
fn host6() -> Ipv6Addr {
    "fd00::1".parse().unwrap()
}

fn tcp(dport: u16) -> L4 {
    L4::Tcp {
        sport: 40000,
        dport,
        flags: TCP_SYN,
    }
}
fn udp(dport: u16) -> L4 {
    L4::Udp {
        sport: 40000,
        dport,
        payload: b"query".to_vec(),
    }
}

#[test]
fn vlan_and_qinq_are_walked_and_deeper_stacks_dropped() {
    let g = load(POLICY);
    let allowed = ipv4(LAB4, HOST4, 0, (0, false), &tcp(80));
    let denied = ipv4(OUT4, HOST4, 0, (0, false), &tcp(80));
    for tags in [&[0x8100][..], &[0x88a8, 0x8100][..], &[0x8100, 0x8100][..]] {
        assert_eq!(
            g.verdict(&with_vlans(&allowed, tags)),
            XDP_PASS,
            "{tags:x?}"
        );
        assert_eq!(g.verdict(&with_vlans(&denied, tags)), XDP_DROP, "{tags:x?}");
    }
    let three = with_vlans(&allowed, &[0x88a8, 0x8100, 0x8100]);
    assert_eq!(
        g.verdict(&three),
        XDP_DROP,
        "three tags: more than the parser walks"
    );
    assert_eq!(g.counters().reason("unsupported"), 1);
    // VLAN-tagged ARP is not IP: passes.
    assert_eq!(g.verdict(&with_vlans(&arp(), &[0x8100])), XDP_PASS);
}

#[test]
fn ipv4_options_move_the_transport_header() {
    let g = load(POLICY);
    for words in 0..=10 {
        let ok = ipv4(LAB4, HOST4, words, (0, false), &tcp(80));
        let no = ipv4(LAB4, HOST4, words, (0, false), &tcp(81));
        assert_eq!(g.verdict(&ok), XDP_PASS, "IHL {}", 5 + words);
        assert_eq!(g.verdict(&no), XDP_DROP, "IHL {}", 5 + words);
    }
    assert_eq!(g.packets("web"), 11);
}

#[test]
fn ipv4_fragments_first_judged_later_passed() {
    let g = load(POLICY);
    assert_eq!(
        g.verdict(&ipv4(OUT4, HOST4, 0, (0, true), &udp(53))),
        XDP_DROP,
        "first fragment has ports"
    );
    assert_eq!(
        g.verdict(&ipv4(LAB4, HOST4, 0, (0, true), &udp(53))),
        XDP_PASS
    );
    assert_eq!(
        g.verdict(&ipv4(OUT4, HOST4, 0, (185, false), &udp(53))),
        XDP_PASS
    );
    assert_eq!(
        g.verdict(&ipv4(OUT4, HOST4, 0, (1, true), &tcp(22))),
        XDP_PASS
    );
    assert_eq!(g.counters().reason("fragment_passed"), 2);
}

#[test]
fn ipv6_extension_headers_are_walked_up_to_eight() {
    let g = load(POLICY);
    let chains: &[&[Ext]] = &[
        &[],
        &[Ext::HopByHop(0)],
        &[Ext::HopByHop(3), Ext::DestOpts(1)],
        &[Ext::Routing(2)],
        &[Ext::Fragment(0, true)],
        &[Ext::Ah(4)],
        &[
            Ext::HopByHop(0),
            Ext::Routing(0),
            Ext::Fragment(0, false),
            Ext::Ah(1),
            Ext::DestOpts(0),
        ],
        &[Ext::DestOpts(0); 8],
    ];
    for chain in chains {
        for (l4, ok) in [
            (tcp(80), true),
            (udp(53), true),
            (tcp(81), false),
            (udp(54), false),
        ] {
            assert_eq!(
                g.verdict(&ipv6(lab6(), host6(), chain, &l4)),
                if ok { XDP_PASS } else { XDP_DROP },
                "{chain:?} {l4:?}"
            );
        }
        assert_eq!(
            g.verdict(&ipv6(out6(), host6(), chain, &tcp(80))),
            XDP_DROP,
            "{chain:?} outsider"
        );
    }
    assert_eq!(
        g.verdict(&ipv6(lab6(), host6(), &[Ext::DestOpts(0); 9], &tcp(80))),
        XDP_DROP,
        "nine headers"
    );
    assert_eq!(g.counters().reason("unsupported"), 1);
    // A later fragment carries no ports; ICMPv6 after extension headers is found: a
    // neighbour solicitation passes as ICMP control, an echo request is judged (the default
    // `icmp-echo` rule allows it from any source).
    assert_eq!(
        g.verdict(&ipv6(out6(), host6(), &[Ext::Fragment(9, false)], &tcp(81))),
        XDP_PASS
    );
    for icmp_type in [135, 128] {
        let icmp = L4::Other {
            proto: 58,
            bytes: vec![icmp_type, 0, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(
            g.verdict(&ipv6(out6(), host6(), &[Ext::HopByHop(0)], &icmp)),
            XDP_PASS
        );
    }
    let c = g.counters();
    assert_eq!(
        (
            c.reason("fragment_passed"),
            c.reason("icmp_control"),
            c.rule("icmp-echo").unwrap().packets
        ),
        (1, 1, 1)
    );
}

/// Every packet here, cut anywhere before the end of its transport header, is malformed:
/// dropped in enforce mode, passed in audit mode, counted either way.
#[test]
fn truncation_at_every_header_boundary() {
    let packets: Vec<(&str, Vec<u8>, usize)> = vec![
        (
            "ipv4 tcp",
            ipv4(LAB4, HOST4, 0, (0, false), &tcp(80)),
            14 + 20 + 20,
        ),
        (
            "ipv4+options udp",
            ipv4(LAB4, HOST4, 3, (0, false), &udp(53)),
            14 + 32 + 8,
        ),
        (
            "ipv6 tcp",
            ipv6(lab6(), host6(), &[], &tcp(80)),
            14 + 40 + 20,
        ),
        (
            "ipv6 ext udp",
            ipv6(
                lab6(),
                host6(),
                &[Ext::HopByHop(1), Ext::Fragment(0, true)],
                &udp(53),
            ),
            14 + 40 + 16 + 8 + 8,
        ),
        (
            "qinq ipv4 tcp",
            with_vlans(
                &ipv4(LAB4, HOST4, 0, (0, false), &tcp(80)),
                &[0x88a8, 0x8100],
            ),
            14 + 8 + 20 + 20,
        ),
    ];
    for mode in ["enforce", "audit"] {
        let g = load(&POLICY.replace("mode = \"enforce\"", &format!("mode = \"{mode}\"")));
        let mut cuts = 0;
        for (name, packet, header_end) in &packets {
            assert_eq!(g.verdict(packet), XDP_PASS, "{name} whole, {mode}");
            // BPF_PROG_TEST_RUN needs at least an Ethernet header.
            for len in 14..*header_end {
                let want = if mode == "enforce" {
                    XDP_DROP
                } else {
                    XDP_PASS
                };
                assert_eq!(
                    g.verdict(&packet[..len]),
                    want,
                    "{name} cut at {len}, {mode}"
                );
                cuts += 1;
            }
        }
        let c = g.counters();
        assert_eq!(c.reason("malformed"), cuts, "{mode}");
        assert_eq!(
            c.reason("policy"),
            0,
            "{mode}: no truncated packet reaches the policy"
        );
    }
}

#[test]
fn inconsistent_headers_are_malformed() {
    let g = load(POLICY);
    let good = ipv4(LAB4, HOST4, 0, (0, false), &tcp(80));
    let mut bad_version = good.clone();
    bad_version[14] = 0x55;
    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
    let mut bad_doff = good.clone();
    bad_doff[14 + 20 + 12] = 4 << 4;
    let mut v6_as_4 = ipv6(lab6(), host6(), &[], &tcp(80));
    v6_as_4[14] = 0x40;
    for (name, p) in [
        ("version", &bad_version),
        ("total length", &short_total),
        ("tcp data offset", &bad_doff),
        ("ipv6 version", &v6_as_4),
    ] {
        assert_eq!(g.verdict(p), XDP_DROP, "{name}");
    }
    assert_eq!(g.counters().reason("malformed"), 4);
}
