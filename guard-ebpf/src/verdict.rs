//! The policy verdict shared by the XDP filter (inbound: the packet's source) and the cgroup
//! connect/sendmsg hooks (outbound: the destination), and the per-rule counters.

use aya_ebpf::maps::lpm_trie::Key;
use guard_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, CLASS_BITS, CLASS_LENS_USE_TRIE,
    MAX_CLASS_PREFIX_LENS, PORT_ACTION_MASK, PORT_ACTION_SHIFT, PORT_DIRECT, PORT_FAILSAFE,
    PORT_VALUE_MASK, REASON_BAD_ACTION, RULE_FAILSAFE, RuleRef, SrcHashKeyV4, SrcHashKeyV6,
    SrcKeyV4, SrcKeyV6,
};

use crate::maps::{
    Direct, GUARD_CLASSLEN, GUARD_REASONS, GUARD_RULES, GUARD_SRC_V4, GUARD_SRC_V6, GUARD_SRCH_V4,
    GUARD_SRCH_V6, Policy, bump,
};
use crate::packet::{Addr, addr_bytes};

/// A peer address as the verdict reads it, in the form its program holds it: 16 bytes (the
/// cgroup hooks, from the socket call) or four words (the XDP filter, from the parse). Each
/// form reads its numbers its own cheapest way: a word is one byte swap where bytes take
/// four loads and their shifts.
pub trait Peer {
    /// The address's bytes, in order.
    fn bytes(&self) -> &[u8; 16];
    /// Bytes 12..16 (an IPv4-mapped address's IPv4 address) as a big-endian number.
    fn v4(&self) -> u32;
    /// The first 16 bits, big-endian.
    fn top16(&self) -> u16;
    /// The address as two big-endian halves.
    fn halves(&self) -> (u64, u64);
}

impl Peer for [u8; 16] {
    #[inline(always)]
    fn bytes(&self) -> &[u8; 16] {
        self
    }
    #[inline(always)]
    fn v4(&self) -> u32 {
        u32::from_be_bytes([self[12], self[13], self[14], self[15]])
    }
    #[inline(always)]
    fn top16(&self) -> u16 {
        u16::from_be_bytes([self[0], self[1]])
    }
    #[inline(always)]
    fn halves(&self) -> (u64, u64) {
        let a = self;
        (
            u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
            u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
        )
    }
}

impl Peer for Addr {
    #[inline(always)]
    fn bytes(&self) -> &[u8; 16] {
        addr_bytes(self)
    }
    #[inline(always)]
    fn v4(&self) -> u32 {
        u32::from_be(self[3])
    }
    #[inline(always)]
    fn top16(&self) -> u16 {
        (u32::from_be(self[0]) >> 16) as u16
    }
    #[inline(always)]
    fn halves(&self) -> (u64, u64) {
        let be = |i: usize| u64::from(u32::from_be(self[i]));
        (be(0) << 32 | be(1), be(2) << 32 | be(3))
    }
}

/// The rule index and action for a (protocol slot, port, peer address): the source of an
/// inbound packet, or the destination of an outbound connection. `default` when no rule
/// names the port and peer. The class found in `policy`'s generation is that generation's
/// own (the controller numbers each generation's classes apart).
#[inline(always)]
pub fn decide(
    policy: &Policy,
    slot: u32,
    port: u16,
    v4: bool,
    peer: &impl Peer,
    default: (u32, u32),
) -> (u32, u32) {
    judge(policy, policy.port_entry(slot, port), v4, peer, default)
}

/// The rule and action an entry of the ports array (or of the protocols array, for a
/// protocol judged as a whole: [`Policy::protocol_entry`]) gives `peer`. The action is
/// [`ACTION_ALLOW`], [`ACTION_AUDIT`] or [`ACTION_DENY`]: any other value (a corrupt or
/// zeroed entry) is judged as deny and counted under [`REASON_BAD_ACTION`], so the kernel
/// fails closed.
#[inline(always)]
pub fn judge(
    policy: &Policy,
    entry: u32,
    v4: bool,
    peer: &impl Peer,
    default: (u32, u32),
) -> (u32, u32) {
    if entry & PORT_FAILSAFE != 0 {
        return (RULE_FAILSAFE, ACTION_ALLOW);
    }
    let (rule, action) = if entry & PORT_DIRECT != 0 {
        (
            entry & PORT_VALUE_MASK,
            (entry & PORT_ACTION_MASK) >> PORT_ACTION_SHIFT,
        )
    } else {
        let class = entry & PORT_VALUE_MASK;
        // IPv4: the direct tables answer most peers with inlined array reads (a peer in no
        // zone with one). IPv6: a peer in no zone of the generation skips the source
        // lookups after one inlined array read.
        let hit = if class == 0 {
            None
        } else if v4 {
            match policy.direct_v4(class, peer.v4()) {
                Direct::Rule(hit) => Some(hit),
                Direct::NoRule => None,
                Direct::Lookup => lookup_peer(policy, class, v4, peer),
            }
        } else if !policy.v6_peer_in_some_zone(peer.top16()) {
            None
        } else {
            lookup_peer(policy, class, v4, peer)
        };
        match hit {
            Some(hit) => (hit.rule, hit.action),
            None => default,
        }
    };
    match action {
        ACTION_ALLOW | ACTION_AUDIT | ACTION_DENY => (rule, action),
        _ => {
            core::hint::cold_path();
            bump(&GUARD_REASONS, REASON_BAD_ACTION);
            (rule, ACTION_DENY)
        }
    }
}

/// `addr` with all but its first `len` bits cleared, as two big-endian halves (few
/// branches: the verifier walks this once per prefix length a class uses).
#[inline(always)]
fn mask_v6(addr: &impl Peer, len: u32) -> (u64, u64) {
    let (hi, lo) = addr.halves();
    let hi_mask = if len == 0 {
        0
    } else if len >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - len)
    };
    let lo_mask = if len <= 64 {
        0
    } else if len >= 128 {
        u64::MAX
    } else {
        u64::MAX << (128 - len)
    };
    (hi & hi_mask, lo & lo_mask)
}

/// The bytes of an address given as two big-endian halves.
#[inline(always)]
fn v6_bytes(hi: u64, lo: u64) -> [u8; 16] {
    let (hi, lo) = (hi.to_be_bytes(), lo.to_be_bytes());
    [
        hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], lo[0], lo[1], lo[2], lo[3], lo[4],
        lo[5], lo[6], lo[7],
    ]
}

/// The most specific rule of `class` whose prefix contains `peer`: one hash lookup per
/// prefix length the class uses, longest first; the LPM trie for classes with more lengths
/// than that.
#[inline(always)]
fn lookup_peer(policy: &Policy, class: u32, v4: bool, peer: &impl Peer) -> Option<RuleRef> {
    let lens = GUARD_CLASSLEN.get(class)?;
    if v4 {
        if lens.v4_count == CLASS_LENS_USE_TRIE {
            let key = Key::new(
                CLASS_BITS + 32,
                SrcKeyV4 {
                    class: class.to_be_bytes(),
                    addr: peer.v4().to_be_bytes(),
                },
            );
            return GUARD_SRC_V4.get(key).copied();
        }
        let addr = peer.v4();
        for i in 0..MAX_CLASS_PREFIX_LENS {
            if i >= lens.v4_count as usize {
                break;
            }
            let len = u32::from(lens.v4[i]) & 63;
            let masked = if len == 0 {
                0
            } else if len >= 32 {
                addr
            } else {
                addr & (u32::MAX << (32 - len))
            };
            let key = SrcHashKeyV4 {
                class,
                prefix_len: len,
                addr: masked.to_be_bytes(),
            };
            if let Some(hit) = GUARD_SRCH_V4.get_ptr(&key) {
                // SAFETY: a live map value, copied out.
                return Some(unsafe { *hit });
            }
        }
        None
    } else {
        if lens.v6_count == CLASS_LENS_USE_TRIE {
            let key = Key::new(
                CLASS_BITS + 128,
                SrcKeyV6 {
                    class: class.to_be_bytes(),
                    addr: *peer.bytes(),
                },
            );
            return GUARD_SRC_V6.get(key).copied();
        }
        for i in 0..MAX_CLASS_PREFIX_LENS {
            if i >= lens.v6_count as usize {
                break;
            }
            let len = u32::from(lens.v6[i]) & 255;
            let (hi, lo) = mask_v6(peer, len);
            match policy.table_v6(class, len, hi, lo) {
                Some(Some(hit)) => return Some(hit),
                Some(None) => continue,
                None => {}
            }
            let key = SrcHashKeyV6 {
                class,
                prefix_len: len,
                addr: v6_bytes(hi, lo),
            };
            if let Some(hit) = GUARD_SRCH_V6.get_ptr(&key) {
                // SAFETY: a live map value, copied out.
                return Some(unsafe { *hit });
            }
        }
        None
    }
}

#[inline(always)]
pub fn count_rule(rule: u32, bytes: u64) {
    match GUARD_RULES.get_ptr_mut(rule) {
        // SAFETY: this CPU's slot; BPF programs are not preempted on their CPU.
        Some(stats) => unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        },
        // Cannot happen (rule indices are below the map's size).
        None => core::hint::cold_path(),
    }
}
