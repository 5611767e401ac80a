//! Facts about the host: interfaces, routes, sysctls, bpffs, cgroups, network namespaces.

use std::{
    ffi::CString,
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use ipnet::IpNet;

/// The index of interface `name`, if it exists.
pub fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Interfaces that carry an IPv4 or IPv6 default route, sorted, without duplicates.
pub fn default_route_interfaces() -> io::Result<Vec<String>> {
    let v4 = fs::read_to_string("/proc/net/route")?;
    let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let mut names: Vec<String> = parse_routes(&v4, &v6)
        .into_iter()
        .filter(|r| r.dest.prefix_len() == 0)
        .map(|r| r.iface)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// One route of the main or local table as `/proc/net/route` or `/proc/net/ipv6_route`
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: IpNet,
    pub iface: String,
    pub metric: u32,
}

const RTF_UP: u32 = 0x1;
const RTF_REJECT: u32 = 0x200;

/// Parses `/proc/net/route` and `/proc/net/ipv6_route`: routes that are up, not reject
/// routes, not on `lo`, not multicast.
pub fn parse_routes(v4: &str, v6: &str) -> Vec<Route> {
    let mut routes = Vec::new();
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if f.len() < 8 {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(flags), Some(metric), Some(mask)) =
            (hex(f[1]), hex(f[3]), f[6].parse().ok(), hex(f[7]))
        else {
            continue;
        };
        if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || f[0] == "lo" {
            continue;
        }
        // The kernel prints the address in host byte order of a network-order value.
        let addr = Ipv4Addr::from(dest.to_le_bytes());
        let len = mask.count_ones() as u8;
        if let Ok(net) = ipnet::Ipv4Net::new(addr, len) {
            routes.push(Route {
                dest: IpNet::V4(net),
                iface: f[0].to_owned(),
                metric,
            });
        }
    }
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // dest destlen src srclen nexthop metric refcnt use flags iface
        if f.len() != 10 || f[9] == "lo" {
            continue;
        }
        let (Ok(dest), Ok(len), Ok(metric), Ok(flags)) = (
            u128::from_str_radix(f[0], 16),
            u8::from_str_radix(f[1], 16),
            u32::from_str_radix(f[5], 16),
            u32::from_str_radix(f[8], 16),
        ) else {
            continue;
        };
        let addr = Ipv6Addr::from(dest);
        if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || addr.is_multicast() {
            continue;
        }
        if let Ok(net) = ipnet::Ipv6Net::new(addr, len) {
            routes.push(Route {
                dest: IpNet::V6(net),
                iface: f[9].to_owned(),
                metric,
            });
        }
    }
    routes
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (e.g. `/sys/fs/cgroup` or, on a
/// hybrid hierarchy, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> io::Result<std::path::PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    parse_cgroup2_root(&mountinfo).ok_or_else(|| {
        io::Error::other("no cgroup2 file system is mounted (see /proc/self/mountinfo)")
    })
}

/// The mount point of the first `cgroup2` entry of a mountinfo text.
pub fn parse_cgroup2_root(mountinfo: &str) -> Option<std::path::PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2")
            .then(|| before.split_whitespace().nth(4).map(Into::into))?
    })
}

/// True when `path` is a directory of a cgroup v2 file system.
pub fn is_cgroup2(path: &Path) -> bool {
    fs_magic(path) == Some(CGROUP2_SUPER_MAGIC) && path.is_dir()
}

fn fs_magic(path: &Path) -> Option<i64> {
    rustix::fs::statfs(path).ok().map(|st| st.f_type)
}

/// True when `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    fs_magic(path) == Some(BPF_FS_MAGIC)
}

/// Makes sure `pin_dir`'s parent is a bpffs (mounting one at `/sys/fs/bpf` if that is the
/// parent and nothing is mounted there), then creates `pin_dir`.
pub fn prepare_pin_dir(pin_dir: &Path) -> io::Result<()> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
        if parent == Path::new("/sys/fs/bpf") {
            mount_bpffs(parent)?;
        } else {
            return Err(io::Error::other(format!(
                "{} is not on a bpf filesystem (mount one with `mount -t bpf bpf {}`)",
                pin_dir.display(),
                parent.display()
            )));
        }
    }
    fs::create_dir_all(pin_dir)
}

fn mount_bpffs(at: &Path) -> io::Result<()> {
    rustix::mount::mount("bpf", at, "bpf", rustix::mount::MountFlags::empty(), None)?;
    tracing::info!(path = %at.display(), "mounted bpffs");
    Ok(())
}

/// True when the kernel keeps BPF program run statistics (`kernel.bpf_stats_enabled`).
pub fn bpf_stats_enabled() -> bool {
    read_sysctl("kernel/bpf_stats_enabled").as_deref() == Some("1")
}

/// A sysctl under `/proc/sys`, trimmed.
pub fn read_sysctl(key: &str) -> Option<String> {
    fs::read_to_string(Path::new("/proc/sys").join(key))
        .ok()
        .map(|v| v.trim().to_owned())
}

/// The calling thread inside another network namespace until dropped, when it returns to the
/// one it came from. Sockets opened meanwhile, and `/proc/thread-self/net` and the
/// `net.*` sysctls read meanwhile, are the other namespace's.
pub struct InNetns {
    back: OwnedFd,
}

/// The namespace file for `name`: a path as given (`/proc/PID/ns/net`), else
/// `/run/netns/NAME` (what `ip netns add` makes).
pub fn netns_path(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/run/netns").join(name)
    }
}

impl InNetns {
    pub fn enter(name: &str) -> io::Result<Self> {
        let path = netns_path(name);
        let target = fs::File::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("network namespace {}: {e}", path.display()),
            )
        })?;
        let back: OwnedFd = fs::File::open("/proc/thread-self/ns/net")?.into();
        setns(target.as_fd()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("entering network namespace {}: {e}", path.display()),
            )
        })?;
        Ok(Self { back })
    }
}

/// Moves the calling thread into the network namespace `fd` (setns(2)).
fn setns(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    rustix::thread::move_into_link_name_space(
        fd,
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    Ok(())
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Err(e) = setns(self.back.as_fd()) {
            // Staying in the wrong namespace would make every later answer wrong.
            panic!("returning to the original network namespace: {e}");
        }
    }
}
