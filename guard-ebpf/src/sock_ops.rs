//! sock_ops connection accounting for TCP sockets in the guarded cgroup: connections
//! established and closed per local port (inbound, passive open) and per remote port
//! (outbound, active open), and a log2 histogram of smoothed RTT samples per port.
//!
//! Each established socket is remembered by its cookie, so its close and RTT samples are
//! credited to the right port and a close is counted once. Accounting never changes a
//! socket's behaviour; failures (a full map) only lose a count.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::bpf_get_socket_cookie,
    programs::SockOpsContext,
};
use guard_common::{CONN_INBOUND, CONN_OUTBOUND, ConnStats, RTT_BUCKETS, RttHist, conn_key};

use crate::maps::{GUARD_CONNSTAT, GUARD_RTT, GUARD_SOCKS};

#[inline(always)]
pub fn run(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // local_port is in host byte order.
            established(ctx, conn_key(CONN_INBOUND, ctx.local_port() as u16));
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // remote_port holds the port in network byte order in its high 16 bits.
            let port = u16::from_be((ctx.remote_port() >> 16) as u16);
            established(ctx, conn_key(CONN_OUTBOUND, port));
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => closed(ctx),
        BPF_SOCK_OPS_RTT_CB => rtt(ctx),
        _ => {}
    }
    0
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the sock_ops context is a valid argument for this helper.
    unsafe { bpf_get_socket_cookie(ctx.ops.cast()) }
}

#[inline(always)]
fn established(ctx: &SockOpsContext, key: u32) {
    match GUARD_CONNSTAT.get_ptr_mut(&key) {
        // SAFETY: this CPU's value.
        Some(stats) => unsafe { (*stats).established += 1 },
        None => {
            let _ = GUARD_CONNSTAT.insert(
                &key,
                &ConnStats {
                    established: 1,
                    closed: 0,
                },
                0,
            );
        }
    }
    let _ = GUARD_SOCKS.insert(&cookie(ctx), &key, 0);
    // Ask for state changes (to see the close) and RTT samples of this socket, keeping the
    // callbacks another sock_ops program (or an earlier call) asked for.
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG;
    let _ = ctx.set_cb_flags(flags as i32);
}

#[inline(always)]
fn closed(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    let Some(key) = GUARD_SOCKS.get_ptr(&cookie) else {
        return;
    };
    // SAFETY: a live map value, copied out.
    let key = unsafe { *key };
    let _ = GUARD_SOCKS.remove(&cookie);
    match GUARD_CONNSTAT.get_ptr_mut(&key) {
        // SAFETY: this CPU's value.
        Some(stats) => unsafe { (*stats).closed += 1 },
        None => {
            let _ = GUARD_CONNSTAT.insert(
                &key,
                &ConnStats {
                    established: 0,
                    closed: 1,
                },
                0,
            );
        }
    }
}

#[inline(always)]
fn rtt(ctx: &SockOpsContext) {
    let Some(key) = GUARD_SOCKS.get_ptr(&cookie(ctx)) else {
        return;
    };
    // SAFETY: a live map value, copied out.
    let key = unsafe { *key };
    // srtt_us is the kernel's smoothed RTT in µs, scaled by 8.
    // SAFETY: the context pointer the kernel passed in.
    let srtt_us = unsafe { (*ctx.ops).srtt_us } >> 3;
    let bucket = if srtt_us == 0 {
        0
    } else {
        (31 - srtt_us.leading_zeros()) as usize
    };
    let bucket = if bucket >= RTT_BUCKETS {
        RTT_BUCKETS - 1
    } else {
        bucket
    };
    match GUARD_RTT.get_ptr_mut(&key) {
        Some(hist) => {
            // SAFETY: this CPU's value; the index is below RTT_BUCKETS.
            unsafe { (*hist).buckets[bucket] += 1 };
        }
        None => {
            let mut hist = RttHist::default();
            hist.buckets[bucket] = 1;
            let _ = GUARD_RTT.insert(&key, &hist, 0);
        }
    }
}
