//! guard's kernel programs. Each program lives in its own module; this file only holds the
//! thin entry points the loader finds by name (`guard_common::programs`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// One BPF instruction in `packet` (a 16-bit packet load at any alignment) is written as
// inline assembly; the build enables nightly features (RUSTC_BOOTSTRAP) for the BPF target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// The BPF build reports warnings only as cargo:warning lines of the userspace build: make
// them errors so they cannot pass unnoticed.
#![cfg_attr(target_arch = "bpf", deny(warnings))]

#[cfg(target_arch = "bpf")]
mod cgroup_bind;
#[cfg(target_arch = "bpf")]
mod cgroup_connect;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod sock_addr;
#[cfg(target_arch = "bpf")]
mod sock_create;
#[cfg(target_arch = "bpf")]
mod sock_ops;
#[cfg(target_arch = "bpf")]
mod tc_egress;
#[cfg(target_arch = "bpf")]
mod verdict;
#[cfg(target_arch = "bpf")]
mod xdp_ingress;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        bindings::xdp_action::XDP_PASS,
        macros::{cgroup_sock, cgroup_sock_addr, classifier, sock_ops, xdp},
        programs::{SockAddrContext, SockContext, SockOpsContext, TcContext, XdpContext},
    };

    /// XDP ingress filter on every interface the policy names.
    #[xdp]
    pub fn guard_xdp_ingress(ctx: XdpContext) -> u32 {
        crate::xdp_ingress::run(&ctx)
    }

    /// TC egress flow recorder on the same interfaces.
    #[classifier]
    pub fn guard_tc_egress(ctx: TcContext) -> i32 {
        crate::tc_egress::run(&ctx)
    }

    /// `bind()` of IPv4 sockets in the guarded cgroup: the `[listen]` allowlist.
    #[cgroup_sock_addr(bind4)]
    pub fn guard_bind4(ctx: SockAddrContext) -> i32 {
        crate::cgroup_bind::run(&ctx, false)
    }

    /// `bind()` of IPv6 sockets in the guarded cgroup.
    #[cgroup_sock_addr(bind6)]
    pub fn guard_bind6(ctx: SockAddrContext) -> i32 {
        crate::cgroup_bind::run(&ctx, true)
    }

    /// `connect()` of IPv4 sockets in the guarded cgroup: `[[egress]]`.
    #[cgroup_sock_addr(connect4)]
    pub fn guard_connect4(ctx: SockAddrContext) -> i32 {
        crate::cgroup_connect::run(&ctx, false)
    }

    /// `connect()` of IPv6 sockets in the guarded cgroup.
    #[cgroup_sock_addr(connect6)]
    pub fn guard_connect6(ctx: SockAddrContext) -> i32 {
        crate::cgroup_connect::run(&ctx, true)
    }

    /// UDP `sendmsg()` with a destination, IPv4.
    #[cgroup_sock_addr(sendmsg4)]
    pub fn guard_sendmsg4(ctx: SockAddrContext) -> i32 {
        crate::cgroup_connect::run(&ctx, false)
    }

    /// UDP `sendmsg()` with a destination, IPv6.
    #[cgroup_sock_addr(sendmsg6)]
    pub fn guard_sendmsg6(ctx: SockAddrContext) -> i32 {
        crate::cgroup_connect::run(&ctx, true)
    }

    /// `socket()` in the guarded cgroup: UDP-Lite, which no connect hook sees.
    #[cgroup_sock(sock_create)]
    pub fn guard_sock_create(ctx: SockContext) -> i32 {
        crate::sock_create::run(&ctx)
    }

    /// TCP connection accounting for the guarded cgroup.
    #[sock_ops]
    pub fn guard_sock_ops(ctx: SockOpsContext) -> u32 {
        crate::sock_ops::run(&ctx)
    }

    /// Returns XDP_PASS and nothing else: the floor `cargo xtask bench` measures against.
    #[xdp]
    pub fn guard_xdp_floor(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// The crate only means something for the BPF target; on the host it is an empty binary so
/// that `cargo build --workspace` and `cargo clippy --workspace` work.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
