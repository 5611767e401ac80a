//! Types and names shared by guard's kernel programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields, so the kernel and userspace
//! agree on the byte layout; the size assertions at the bottom keep it that way. Map names
//! are constants: the kernel side names its statics identically, the userspace loader takes
//! every map by these constants and fails loudly when one is missing.
#![no_std]

/// Names of the maps in the eBPF object (at most 15 bytes: the kernel's name limit).
pub mod maps {
    /// `Array<IngressConfig>`, one entry: mode and default action.
    pub const CONFIG: &str = "GUARD_CONFIG";
    /// `Array<u32>`, `2 * 65536` entries indexed by [`super::port_index`]: the port class of
    /// each (protocol, destination port), or'd with [`super::PORT_FAILSAFE`].
    pub const PORTS: &str = "GUARD_PORTS";
    /// `LpmTrie<SrcKeyV4, RuleRef>`: (port class, IPv4 source prefix) to rule.
    pub const SRC_V4: &str = "GUARD_SRC_V4";
    /// `LpmTrie<SrcKeyV6, RuleRef>`: (port class, IPv6 source prefix) to rule.
    pub const SRC_V6: &str = "GUARD_SRC_V6";
    /// `PerCpuArray<RuleStats>` indexed by rule index.
    pub const RULE_STATS: &str = "GUARD_RULES";
    /// `PerCpuArray<u64>` indexed by [`super::DropReason`]-style indices (`REASON_*`).
    pub const REASONS: &str = "GUARD_REASONS";

    /// Every map the loader must find in the object.
    pub const ALL: [&str; 6] = [CONFIG, PORTS, SRC_V4, SRC_V6, RULE_STATS, REASONS];
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// The XDP ingress filter.
    pub const XDP_INGRESS: &str = "guard_xdp_ingress";
}

/// Whole-policy mode, in [`IngressConfig::mode`].
pub const MODE_UNSET: u32 = 0;
pub const MODE_ENFORCE: u32 = 1;
pub const MODE_AUDIT: u32 = 2;

/// A verdict a rule (or the default) asks for, in [`RuleRef::action`] and
/// [`IngressConfig::default_action`].
pub const ACTION_ALLOW: u32 = 1;
pub const ACTION_DENY: u32 = 2;
/// Deny, but only count and report it ("would drop"); the packet passes.
pub const ACTION_AUDIT: u32 = 3;

/// Rule index of the policy default (packets no rule matched).
pub const RULE_DEFAULT: u32 = 0;
/// Rule index of the failsafe (anti-lockout) ports.
pub const RULE_FAILSAFE: u32 = 1;
/// Index of the first `[[ingress]]` rule; rules follow in file order.
pub const RULE_FIRST_POLICY: u32 = 2;
/// Default capacity of the per-rule counters (the loader may raise it).
pub const MAX_RULES: u32 = 4096;
/// Default capacity of each source trie (the loader may raise it).
pub const MAX_SRC_ENTRIES: u32 = 65536;

/// Protocol slot in [`maps::PORTS`].
pub const PROTO_IDX_TCP: u32 = 0;
pub const PROTO_IDX_UDP: u32 = 1;
/// Entries in [`maps::PORTS`].
pub const PORTS_LEN: u32 = 2 * 65536;
/// Flag in a [`maps::PORTS`] value: the port is a failsafe port (always passes).
pub const PORT_FAILSAFE: u32 = 1 << 31;
/// The port-class part of a [`maps::PORTS`] value. Class 0 means no rule names the port.
pub const PORT_CLASS_MASK: u32 = !PORT_FAILSAFE;

/// Index into [`maps::PORTS`] for a protocol slot and destination port.
#[inline(always)]
pub const fn port_index(proto_idx: u32, port: u16) -> u32 {
    (proto_idx << 16) | port as u32
}

/// Counter indices in [`maps::REASONS`]: why packets were dropped (or, in audit mode,
/// would have been), plus packets passed without a policy decision.
pub const REASON_POLICY: u32 = 0;
/// A header was cut short or inconsistent (IPv4 IHL < 5, truncated TCP/UDP, ...).
pub const REASON_MALFORMED: u32 = 1;
/// More VLAN tags or IPv6 extension headers than the parser walks.
pub const REASON_UNSUPPORTED: u32 = 2;
/// IPv4/IPv6 fragments after the first: no ports to judge, passed (see the README).
pub const REASON_FRAGMENT_PASSED: u32 = 3;
/// Packets that are not TCP or UDP over IP (ARP, ICMP, ...): passed.
pub const REASON_NOT_TCP_UDP: u32 = 4;
pub const REASONS_LEN: u32 = 5;

/// The single entry of [`maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressConfig {
    /// `MODE_*`. `MODE_UNSET` only exists before the loader writes the entry, which it does
    /// before attaching; the program passes everything in that state.
    pub mode: u32,
    /// `ACTION_ALLOW` or `ACTION_DENY` for packets no rule matches.
    pub default_action: u32,
}

/// Value of the source tries: which rule matched and what it asks for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub rule: u32,
    pub action: u32,
}

/// Key data of [`maps::SRC_V4`]. The port class comes first, big-endian, so a prefix length
/// of `32 + n` matches the whole class and the first `n` bits of the source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrcKeyV4 {
    pub class: [u8; 4],
    pub addr: [u8; 4],
}

/// Key data of [`maps::SRC_V6`]; see [`SrcKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrcKeyV6 {
    pub class: [u8; 4],
    pub addr: [u8; 16],
}

/// Bits of a source key taken by the port class.
pub const CLASS_BITS: u32 = 32;

/// Per-rule counters (one per CPU in [`maps::RULE_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<IngressConfig>() == 8);
const _: () = assert!(core::mem::size_of::<RuleRef>() == 8);
const _: () = assert!(core::mem::size_of::<SrcKeyV4>() == 8);
const _: () = assert!(core::mem::size_of::<SrcKeyV6>() == 20);
const _: () = assert!(core::mem::size_of::<RuleStats>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers and byte arrays, without padding
    // (checked by the size assertions above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::IngressConfig {}
    unsafe impl aya::Pod for super::RuleRef {}
    unsafe impl aya::Pod for super::SrcKeyV4 {}
    unsafe impl aya::Pod for super::SrcKeyV6 {}
    unsafe impl aya::Pod for super::RuleStats {}
}
