//! cgroup `socket()` hook: UDP-Lite sockets in the guarded cgroup.
//!
//! UDP-Lite is judged as UDP everywhere, but the kernel runs no cgroup connect hook for it
//! (its protocol has no `pre_connect`), and a connected socket's sends carry no address for
//! the sendmsg hook. So when `[[egress]]` denies or audits some UDP destinations, creating a
//! UDP-Lite socket in the cgroup is denied (EPERM) in enforce mode: a UDP-Lite socket could
//! otherwise reach a denied destination through `connect()` then `send()`.
//!
//! Verdicts, chosen on purpose: 1 lets `socket()` proceed, 0 makes it fail with EPERM. Every
//! other socket, an unconfigured program, audit mode and policies without such egress rules
//! proceed. Each denial (or audit-mode would-be denial) is reported as a `connect_denied`
//! event with protocol `udplite`, the process, and no destination (there is none yet).

use aya_ebpf::{helpers::bpf_get_current_comm, programs::SockContext};
use guard_common::{
    AF_INET6, EVENT_CONNECT_DENIED, EVENT_FLAG_AUDIT, Event, IPPROTO_UDPLITE, MODE_ENFORCE,
    REASON_UNCONFIGURED, RULE_EGRESS_DEFAULT,
};

use crate::{
    events,
    maps::{GUARD_REASONS, Policy, bump},
    sock_addr,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[inline(always)]
pub fn run(ctx: &SockContext) -> i32 {
    let Some(policy) = Policy::current() else {
        // No active policy: proceed (anti-lockout), counted as `unconfigured`.
        bump(&GUARD_REASONS, REASON_UNCONFIGURED);
        return ALLOW;
    };
    let config = policy.config;
    // SAFETY: the context pointer the kernel passed in.
    let (protocol, family) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).family) };
    if protocol != u32::from(IPPROTO_UDPLITE) || config.udplite_denied == 0 {
        return ALLOW;
    }
    let deny = config.mode == MODE_ENFORCE;
    let (pid, limit_key) = sock_addr::process(0xc1);
    events::send(
        Event {
            kind: EVENT_CONNECT_DENIED,
            rule: RULE_EGRESS_DEFAULT,
            proto: IPPROTO_UDPLITE,
            family: if family == AF_INET6 { 6 } else { 4 },
            flags: if deny { 0 } else { EVENT_FLAG_AUDIT },
            pid,
            comm: bpf_get_current_comm().unwrap_or_default(),
            ..Event::default()
        },
        &limit_key,
        config,
    );
    if deny { DENY } else { ALLOW }
}
