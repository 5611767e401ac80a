//! Facts about the host: interfaces, default routes, bpffs.

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

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
    let mut names = parse_default_routes(&v4, &v6);
    names.sort();
    names.dedup();
    Ok(names)
}

/// Parses `/proc/net/route` and `/proc/net/ipv6_route` texts for default-route interfaces.
pub fn parse_default_routes(v4: &str, v6: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
            names.push(f[0].to_owned());
        }
    }
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // dest prefix src srcprefix nexthop metric refcnt use flags iface
        if f.len() == 10 && f[0].chars().all(|c| c == '0') && f[1] == "00" && f[9] != "lo" {
            names.push(f[9].to_owned());
        }
    }
    names
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
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct; c is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        (libc::statfs(c.as_ptr(), &mut st) == 0).then_some(st.f_type as i64)
    }
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
    let target = CString::new(at.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!(path = %at.display(), "mounted bpffs");
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True when the kernel keeps BPF program run statistics (`kernel.bpf_stats_enabled`).
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
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
        setns(target.as_raw_fd()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("entering network namespace {}: {e}", path.display()),
            )
        })?;
        Ok(Self { back })
    }
}

fn setns(fd: i32) -> io::Result<()> {
    // SAFETY: setns on an open namespace fd; it changes only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Err(e) = setns(self.back.as_raw_fd()) {
            // Staying in the wrong namespace would make every later answer wrong.
            panic!("returning to the original network namespace: {e}");
        }
    }
}
