//! `kernel`: version, BPF features, unprivileged BPF, JIT.

use super::*;

/// (major, minor) of a kernel release such as `6.1.0-18-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The oldest kernel guard supports: it needs BPF links for cgroups (5.7) and XDP (5.9)
/// and ring buffers (5.8); 5.10 is the first LTS line with them all.
pub const MIN_KERNEL: (u32, u32) = (5, 10);

/// Judges the kernel: `release` from uname, `features` as (name, supported), and
/// `read` for `kernel/unprivileged_bpf_disabled`, `net/core/bpf_jit_enable`,
/// `net/core/bpf_jit_harden`.
pub fn check_kernel(
    release: &str,
    features: &[(&str, Option<bool>)],
    read: impl Fn(&str) -> Option<String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    match kernel_version(release) {
        Some(v) if v >= MIN_KERNEL => out.push(finding(
            "kernel",
            Severity::Ok,
            format!("kernel {release}"),
            "",
        )),
        _ => out.push(finding(
            "kernel",
            Severity::Error,
            format!(
                "kernel {release} is older than {}.{}, the oldest guard supports",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            "upgrade the kernel (your distribution's current LTS kernel)",
        )),
    }
    let missing: Vec<&str> = features
        .iter()
        .filter(|(_, ok)| *ok == Some(false))
        .map(|(n, _)| *n)
        .collect();
    let list = features
        .iter()
        .map(|(n, ok)| {
            format!(
                "{n} {}",
                match ok {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "?",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    out.push(if missing.is_empty() {
        finding("kernel", Severity::Ok, format!("BPF features: {list}"), "")
    } else {
        finding(
            "kernel",
            Severity::Error,
            format!("BPF features missing: {} ({list})", missing.join(", ")),
            "guard needs them all: use a kernel built with CONFIG_BPF_SYSCALL, CONFIG_XDP_SOCKETS, CONFIG_CGROUP_BPF, CONFIG_NET_CLS_BPF",
        )
    });
    match read("kernel/unprivileged_bpf_disabled").as_deref() {
        Some("1" | "2") => out.push(finding(
            "kernel",
            Severity::Ok,
            "unprivileged BPF is disabled",
            "",
        )),
        Some(v) => out.push(finding(
            "kernel",
            Severity::Warning,
            format!("unprivileged BPF is enabled (kernel.unprivileged_bpf_disabled = {v})"),
            "any user can load BPF programs (a large attack surface): sysctl -w kernel.unprivileged_bpf_disabled=1",
        )),
        None => {}
    }
    match read("net/core/bpf_jit_enable").as_deref() {
        Some("0") => out.push(finding(
            "kernel",
            Severity::Warning,
            "the BPF JIT is off: guard's programs run interpreted, several times slower",
            "sysctl -w net.core.bpf_jit_enable=1",
        )),
        Some(v) => out.push(finding(
            "kernel",
            Severity::Ok,
            format!("BPF JIT on ({v})"),
            "",
        )),
        None => {}
    }
    match read("net/core/bpf_jit_harden").as_deref() {
        Some("0") => out.push(finding(
            "kernel",
            Severity::Info,
            "BPF JIT hardening is off (net.core.bpf_jit_harden = 0)",
            "sysctl -w net.core.bpf_jit_harden=1 blinds constants in unprivileged programs (2: in all, at some cost)",
        )),
        Some(v) => out.push(finding(
            "kernel",
            Severity::Ok,
            format!("BPF JIT hardening {v}"),
            "",
        )),
        None => {}
    }
    out
}

pub(super) fn kernel_checks() -> Vec<Finding> {
    use aya::{
        maps::MapType,
        programs::ProgramType,
        sys::{is_map_supported, is_program_supported},
    };
    // The release as uname(2) gives it.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |r| r.trim().to_owned());
    let prog = |t| is_program_supported(t).ok();
    let map = |t| is_map_supported(t).ok();
    let features = [
        ("xdp", prog(ProgramType::Xdp)),
        ("tc", prog(ProgramType::SchedClassifier)),
        ("cgroup_sock_addr", prog(ProgramType::CgroupSockAddr)),
        ("sock_ops", prog(ProgramType::SockOps)),
        ("lpm_trie", map(MapType::LpmTrie)),
        ("ringbuf", map(MapType::RingBuf)),
    ];
    check_kernel(&release, &features, crate::linux::host::read_sysctl)
}
