//! The policy verdict shared by the XDP filter (inbound: the packet's source) and the cgroup
//! connect/sendmsg hooks (outbound: the destination), and the per-rule counters.

use aya_ebpf::maps::lpm_trie::Key;
use guard_common::{
    ACTION_ALLOW, CLASS_BITS, CLASS_LENS_USE_TRIE, MAX_CLASS_PREFIX_LENS, PORT_ACTION_MASK,
    PORT_ACTION_SHIFT, PORT_DIRECT, PORT_FAILSAFE, PORT_VALUE_MASK, RULE_FAILSAFE, RuleRef,
    SrcHashKeyV4, SrcHashKeyV6, SrcKeyV4, SrcKeyV6,
};

use crate::maps::{
    GUARD_CLASSLEN, GUARD_RULES, GUARD_SRC_V4, GUARD_SRC_V6, GUARD_SRCH_V4, GUARD_SRCH_V6, Policy,
};

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
    peer: &[u8; 16],
    default: (u32, u32),
) -> (u32, u32) {
    let entry = policy.port_entry(slot, port);
    if entry & PORT_FAILSAFE != 0 {
        return (RULE_FAILSAFE, ACTION_ALLOW);
    }
    if entry & PORT_DIRECT != 0 {
        return (
            entry & PORT_VALUE_MASK,
            (entry & PORT_ACTION_MASK) >> PORT_ACTION_SHIFT,
        );
    }
    let class = entry & PORT_VALUE_MASK;
    if class != 0
        && let Some(hit) = lookup_peer(class, v4, peer)
    {
        return (hit.rule, hit.action);
    }
    default
}

/// The most specific rule of `class` whose prefix contains `peer`: one hash lookup per
/// prefix length the class uses, longest first; the LPM trie for classes with more lengths
/// than that.
#[inline(always)]
fn lookup_peer(class: u32, v4: bool, peer: &[u8; 16]) -> Option<RuleRef> {
    let lens = GUARD_CLASSLEN.get(class)?;
    if v4 {
        if lens.v4_count == CLASS_LENS_USE_TRIE {
            let key = Key::new(
                CLASS_BITS + 32,
                SrcKeyV4 {
                    class: class.to_be_bytes(),
                    addr: [peer[12], peer[13], peer[14], peer[15]],
                },
            );
            return GUARD_SRC_V4.get(key).copied();
        }
        let addr = u32::from_be_bytes([peer[12], peer[13], peer[14], peer[15]]);
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
                    addr: *peer,
                },
            );
            return GUARD_SRC_V6.get(key).copied();
        }
        for i in 0..MAX_CLASS_PREFIX_LENS {
            if i >= lens.v6_count as usize {
                break;
            }
            let len = u32::from(lens.v6[i]) & 255;
            let mut addr = *peer;
            let whole = (len / 8) as usize;
            let rest = len % 8;
            for (j, byte) in addr.iter_mut().enumerate() {
                if j > whole || (j == whole && rest == 0) {
                    *byte = 0;
                } else if j == whole {
                    *byte &= 0xffu8 << (8 - rest);
                }
            }
            let key = SrcHashKeyV6 {
                class,
                prefix_len: len,
                addr,
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
    if let Some(stats) = GUARD_RULES.get_ptr_mut(rule) {
        // SAFETY: this CPU's slot; BPF programs are not preempted on their CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
    }
}
