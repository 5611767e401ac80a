//! What the cgroup socket-address hooks (bind, connect, sendmsg) read from their context.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::SockAddrContext};

use crate::packet::Addr;

/// The address the call names (bind: local; connect/sendmsg: destination), 16 bytes with
/// IPv4 IPv4-mapped, and its port (network byte order in `user_port`'s low 16 bits).
#[inline(always)]
pub fn user_addr(ctx: &SockAddrContext, v6: bool) -> ([u8; 16], u16) {
    // SAFETY: the context pointer the kernel passed in.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    if v6 {
        for (i, word) in sa.user_ip6.iter().enumerate() {
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    } else {
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    }
    (addr, u16::from_be(sa.user_port as u16))
}

/// The calling process (thread group id) and its event rate-limit key: not an address
/// (the pid in the first four bytes, `tag` in the last), so a process has a bucket of its
/// own per hook kind.
#[inline(always)]
pub fn process(tag: u8) -> (u32, Addr) {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (pid, [pid, 0, 0, u32::from_ne_bytes([0, 0, 0, tag])])
}
