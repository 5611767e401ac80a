//! Tier 2: the kernel fails closed on purpose. A rule entry whose action is not allow, audit
//! or deny (corrupt or zeroed behind guard's back) drops and is counted as `bad_action`; with
//! no active policy the programs pass (the anti-lockout choice) and count `unconfigured`.
//! The maps are corrupted through raw writes, then packets run through BPF_PROG_TEST_RUN.

use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap};
use guard_common::{
    DIRECT_RULES_LEN, GuardConfig, POLICY_PORTS_LEN, PORT_ACTION_MASK, PORT_DIRECT, PROTO_IDX_TCP,
    RuleRef, SrcHashKeyV4, gen_index, maps, port_index,
};
use guard_tests::{
    kernel::{Loaded, XDP_DROP, XDP_PASS, load},
    packets::tcp4,
};

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn policy(mode: &str) -> String {
    format!(
        r#"
mode = "{mode}"
interfaces = ["unused0"]
default = "deny"
[[ingress]]
name = "web"
proto = "tcp"
ports = [80]
[[ingress]]
name = "office"
proto = "tcp"
ports = [8443]
from = ["192.0.2.0/24"]
[[ingress]]
name = "lab"
proto = "tcp"
ports = [8443]
from = ["198.51.100.0/24"]
"#
    )
}

/// The active generation's ports-array entry of TCP `port`, rewritten by `f`.
fn rewrite_port_entry(g: &mut Loaded, port: u16, f: impl FnOnce(u32) -> u32) {
    let generation = g.guard.active_record().expect("active").generation & 1;
    let map = g.guard.raw_map_mut(maps::PORTS).expect("ports map");
    let mut ports = Array::<_, u32>::try_from(map).expect("ports array");
    let index = gen_index(
        generation,
        POLICY_PORTS_LEN,
        port_index(PROTO_IDX_TCP, port),
    );
    let entry = ports.get(&index, 0).expect("entry");
    ports.set(index, f(entry), 0).expect("write entry");
}

/// `packet`, whose entry was corrupted to an unknown action, is dropped (fail closed) and
/// counted once under `bad_action`.
fn drops_as_bad_action(g: &mut Loaded, packet: &[u8]) {
    assert_eq!(
        g.verdict(packet),
        XDP_DROP,
        "an unknown action fails closed"
    );
    assert_eq!(g.counters().reason("bad_action"), 1);
}

#[test]
fn a_zeroed_action_in_a_direct_entry_drops_and_counts_bad_action() {
    let mut g = load(&policy("enforce"));
    let web = tcp4(ip4("203.0.113.9"), 80);
    assert_eq!(g.verdict(&web), XDP_PASS, "the intact rule allows");
    rewrite_port_entry(&mut g, 80, |entry| {
        assert_ne!(
            entry & PORT_DIRECT,
            0,
            "an any-source rule is a direct entry"
        );
        entry & !PORT_ACTION_MASK
    });
    assert_eq!(g.verdict(&web), XDP_DROP, "a zeroed action fails closed");
    let c = g.counters();
    assert_eq!(c.reason("bad_action"), 1);
    assert_eq!(
        c.rule("web").unwrap().packets,
        2,
        "both counted under the rule"
    );
}

#[test]
fn a_corrupt_action_in_a_direct_row_drops_and_counts_bad_action() {
    let mut g = load(&policy("enforce"));
    let office = tcp4(ip4("192.0.2.7"), 8443);
    assert_eq!(g.verdict(&office), XDP_PASS);
    let map = g
        .guard
        .raw_map_mut(maps::SRC_DIRECT_RULES)
        .expect("direct rows");
    let mut rows = Array::<_, RuleRef>::try_from(map).expect("array");
    let mut corrupted = 0;
    for index in 0..DIRECT_RULES_LEN {
        let mut value = rows.get(&index, 0).expect("value");
        if value.action != 0 {
            value.action = 7;
            rows.set(index, value, 0).expect("write value");
            corrupted += 1;
        }
    }
    assert!(corrupted > 0, "IPv4 zone rules have direct rows");
    drops_as_bad_action(&mut g, &office);
}

#[test]
fn a_corrupt_action_in_a_source_entry_drops_and_counts_bad_action() {
    // A /32 source: its /24 is left to the source hash.
    let mut g = load(&policy("enforce").replace("\"192.0.2.0/24\"", "\"192.0.2.7/32\""));
    let office = tcp4(ip4("192.0.2.7"), 8443);
    assert_eq!(g.verdict(&office), XDP_PASS);
    let map = g.guard.raw_map_mut(maps::SRC_HASH_V4).expect("source map");
    let mut sources = HashMap::<_, SrcHashKeyV4, RuleRef>::try_from(map).expect("hash");
    let keys: Vec<SrcHashKeyV4> = sources.keys().map(|k| k.expect("key")).collect();
    assert!(!keys.is_empty(), "zone rules live in the source hash");
    for key in keys {
        let mut value = sources.get(&key, 0).expect("value");
        value.action = 7;
        sources.insert(key, value, 0).expect("write value");
    }
    drops_as_bad_action(&mut g, &office);
}

#[test]
fn audit_mode_reports_a_corrupt_entry_and_passes() {
    let mut g = load(&policy("audit"));
    rewrite_port_entry(&mut g, 80, |entry| entry & !PORT_ACTION_MASK);
    assert_eq!(g.verdict(&tcp4(ip4("203.0.113.9"), 80)), XDP_PASS);
    let c = g.counters();
    assert_eq!(c.reason("bad_action"), 1);
    assert_eq!(c.reason("policy"), 1, "reported as a would-be drop");
    let events = g.take_events();
    assert_eq!(events.len(), 1, "{events:?}");
}

#[test]
fn no_active_policy_passes_and_counts_unconfigured() {
    let mut g = load(&policy("enforce"));
    let denied = tcp4(ip4("203.0.113.9"), 81);
    assert_eq!(
        g.verdict(&denied),
        XDP_DROP,
        "default deny while configured"
    );
    let generation = g.guard.active_record().expect("active").generation & 1;
    let map = g.guard.raw_map_mut(maps::CONFIG).expect("config map");
    let mut config = Array::<_, GuardConfig>::try_from(map).expect("config array");
    config
        .set(generation, GuardConfig::default(), 0)
        .expect("zero the config");
    assert_eq!(
        g.verdict(&denied),
        XDP_PASS,
        "no policy: pass (anti-lockout)"
    );
    let c = g.counters();
    assert_eq!(c.reason("unconfigured"), 1);
    assert_eq!(c.reason("policy"), 1, "only the configured run was judged");
}
