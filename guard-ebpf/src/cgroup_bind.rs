//! cgroup `bind()` hooks (IPv4 and IPv6): processes in the guarded cgroup may only bind the
//! ports `[listen]` allows. TCP and MPTCP sockets are judged by the TCP list, UDP and UDP-Lite
//! sockets by the UDP list, and sockets of any other protocol that reach this hook by both:
//! they may bind a port only when `[listen]` allows it for TCP and for UDP (`allow`). Port 0
//! (the kernel picks an ephemeral port) and sockets that never bind are not seen here: the
//! daemon's listener audit reports their listeners (see `[listen]` in docs/policy.md).
//!
//! Verdicts, chosen on purpose: 1 lets `bind()` proceed, 0 makes it fail with EPERM. Without
//! a `[listen]` section, before the config is written, and in audit mode, `bind()` proceeds;
//! every denial (and audit-mode would-be denial) is counted per port and reported as an
//! event with pid and command.

use aya_ebpf::{helpers::bpf_get_current_comm, programs::SockAddrContext};
use guard_common::{
    EVENT_BIND_DENIED, EVENT_FLAG_AUDIT, Event, MODE_ENFORCE, PROTO_IDX_TCP, PROTO_IDX_UDP,
    REASON_UNCONFIGURED, event_proto, port_index, port_proto_idx,
};

use crate::{
    events,
    maps::{GUARD_BINDDENY, GUARD_REASONS, Policy, bump, bump_hash},
    sock_addr,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[inline(always)]
pub fn run(ctx: &SockAddrContext, v6: bool) -> i32 {
    let Some(policy) = Policy::current() else {
        // No active policy: proceed (anti-lockout), counted as `unconfigured`.
        bump(&GUARD_REASONS, REASON_UNCONFIGURED);
        return ALLOW;
    };
    let config = policy.config;
    if config.listen_enforced == 0 {
        return ALLOW;
    }
    // SAFETY: the context pointer the kernel passed in.
    let sa = unsafe { &*ctx.sock_addr };
    let (local, port) = sock_addr::user_addr(ctx, v6);
    if port == 0 {
        return ALLOW;
    }
    let (allowed, counted_as) = match port_proto_idx(sa.protocol) {
        Some(proto_idx) => (policy.listen_allowed(proto_idx, port), proto_idx),
        None => (
            policy.listen_allowed(PROTO_IDX_TCP, port)
                && policy.listen_allowed(PROTO_IDX_UDP, port),
            PROTO_IDX_TCP,
        ),
    };
    if allowed {
        return ALLOW;
    }
    bump_hash(&GUARD_BINDDENY, port_index(counted_as, port));
    let proto = event_proto(sa.protocol);
    let enforce = config.mode == MODE_ENFORCE;
    let (pid, limit_key) = sock_addr::process(0xb1);
    events::send(
        Event {
            kind: EVENT_BIND_DENIED,
            src: local,
            sport: port,
            family: if v6 { 6 } else { 4 },
            proto,
            flags: if enforce { 0 } else { EVENT_FLAG_AUDIT },
            pid,
            comm: bpf_get_current_comm().unwrap_or_default(),
            ..Event::default()
        },
        &limit_key,
        config,
    );
    if enforce { DENY } else { ALLOW }
}
