//! Loading guard's programs for BPF_PROG_TEST_RUN: nothing is attached anywhere.

use aya::programs::{TestRun as _, TestRunOptions};
use guard::{
    datapath::counters::Counters,
    datapath::{Guard, KernelLog},
    observe::events::{Decoder, DenyEvent},
    policy::{self, PortSlot, RuleInfo},
};

use crate::require_root;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;

/// guard's programs loaded with a policy.
pub struct Loaded {
    pub guard: Guard,
    pub rules: Vec<RuleInfo>,
    pub slots: Vec<PortSlot>,
    /// The running policy's class ids (kept by the next switch, as the daemon does).
    pub classes: policy::ClassIds,
}

/// Validates, lowers and loads `text` (panicking with the errors if it is invalid).
pub fn load(text: &str) -> Loaded {
    load_logging(text, KernelLog::Off)
}

/// As [`load`], with the kernel log at `level`: the verifier then also walks the programs'
/// log code, which it refuses on its own account when that code is wrong.
pub fn load_logging(text: &str, level: KernelLog) -> Loaded {
    require_root();
    let checked = policy::check("test.toml", text).unwrap_or_else(|e| panic!("{e}"));
    let lowered = policy::lower(&checked.policy);
    let guard = Guard::load(&lowered, level, None).unwrap_or_else(|e| panic!("load: {e}"));
    Loaded {
        guard,
        rules: lowered.rules,
        slots: lowered.slots,
        classes: lowered.class_ids,
    }
}

impl Loaded {
    /// Makes `text` the running policy the way the daemon does when the maps have room:
    /// written into the inactive generation, then flipped ([`Guard::switch`]). Rules and
    /// ports that stay keep their counters. Returns the number of map writes.
    pub fn switch(&mut self, text: &str) -> usize {
        self.switch_until(text, None)
    }

    /// As [`Loaded::switch`], provisional until `deadline_ns` (CLOCK_MONOTONIC_COARSE, see
    /// `guard::datapath::monotonic_ns`): after it the programs judge by the previous policy.
    pub fn switch_until(&mut self, text: &str, deadline_ns: Option<u64>) -> usize {
        let checked = policy::check("test.toml", text).unwrap_or_else(|e| panic!("{e}"));
        let lowered =
            policy::lower_after_classes(&checked.policy, &self.rules, &self.slots, &self.classes);
        assert!(self.guard.fits(&lowered), "the policy fits the loaded maps");
        let writes = self
            .guard
            .switch(&lowered, deadline_ns)
            .unwrap_or_else(|e| panic!("switch: {e}"));
        self.rules = lowered.rules;
        self.slots = lowered.slots;
        self.classes = lowered.class_ids;
        writes
    }

    /// `text` lowered as the running policy was (its rules and ports keep their slots): what
    /// [`Guard::verify`] compares the kernel with.
    pub fn lowered(&self, text: &str) -> policy::Lowered {
        let checked = policy::check("test.toml", text).unwrap_or_else(|e| panic!("{e}"));
        policy::lower_after_classes(&checked.policy, &self.rules, &self.slots, &self.classes)
    }

    /// The XDP verdict for one packet.
    pub fn verdict(&self, packet: &[u8]) -> u32 {
        self.verdict_repeat(packet, 1)
    }

    /// The XDP verdict for `packet` run `repeat` times in the kernel.
    pub fn verdict_repeat(&self, packet: &[u8], repeat: u32) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        };
        self.guard
            .xdp()
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN (xdp)")
            .return_value
    }

    /// Runs the TC egress program on an outbound packet; returns its verdict.
    pub fn egress(&self, packet: &[u8]) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(packet),
            ..Default::default()
        };
        self.guard
            .tc_egress()
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN (tc)")
            .return_value
    }

    pub fn counters(&self) -> Counters {
        self.guard
            .counters(&self.rules, &self.slots)
            .expect("read counters")
    }

    pub fn packets(&self, rule: &str) -> u64 {
        self.counters()
            .rule(rule)
            .unwrap_or_else(|| panic!("no rule {rule}"))
            .packets
    }

    /// Drains the event ring buffer (it can be taken once per load).
    pub fn take_events(&mut self) -> Vec<DenyEvent> {
        let mut ring = self.guard.take_events().expect("events ring buffer");
        let decoder = Decoder::new(self.rules.clone());
        let mut out = Vec::new();
        while let Some(record) = ring.next() {
            out.push(decoder.decode(&record).expect("decodable event"));
        }
        out
    }
}
