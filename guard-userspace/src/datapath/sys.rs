//! The bpf(2) commands guard needs that aya does not expose for its use: opening a pinned
//! object as a plain fd, replacing a link's program atomically, and a program's run
//! statistics.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the given size; the kernel
    // zero-extends shorter attributes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the bpf object pinned at `path` (BPF_OBJ_GET).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_OBJ_PIN: libc::c_long = 6;

/// Pins the bpf object `fd` at `path` (BPF_OBJ_PIN): a link the daemon holds is pinned
/// again after its pin was removed.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    bpf(BPF_OBJ_PIN, &attr).map(drop)
}

/// Makes the link `link` run `prog` instead of its current program, atomically
/// (BPF_LINK_UPDATE): each packet or call sees either the old or the new program.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &attr).map(drop)
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offsets in `struct bpf_prog_info` (include/uapi/linux/bpf.h).
const PROG_INFO_RUN_TIME_NS: usize = 192;
const PROG_INFO_RUN_CNT: usize = 200;
const PROG_INFO_LEN: usize = 256;

/// A program's kernel run statistics (BPF_OBJ_GET_INFO_BY_FD): (runs, run time in ns).
/// Both stay 0 unless `kernel.bpf_stats_enabled` is 1.
pub fn prog_run_stats(prog: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let info = obj_info::<PROG_INFO_LEN>(prog)?;
    let at =
        |offset: usize| u64::from_ne_bytes(info[offset..offset + 8].try_into().expect("8 bytes"));
    Ok((at(PROG_INFO_RUN_CNT), at(PROG_INFO_RUN_TIME_NS)))
}

/// The first `N` bytes of an object's `bpf_*_info` (BPF_OBJ_GET_INFO_BY_FD); the kernel
/// fills what it knows and leaves the rest zero.
fn obj_info<const N: usize>(fd: BorrowedFd<'_>) -> io::Result<[u8; N]> {
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // The info structs hold u64 fields: 8-byte alignment.
    #[repr(C, align(8))]
    struct Info<const N: usize>([u8; N]);
    let mut info = Info([0; N]);
    let attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: N as u32,
        info: info.0.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    Ok(info.0)
}

/// What `BPF_OBJ_GET_INFO_BY_FD` tells of a link: its type (`bpf_link_type`), the program it
/// runs, and for XDP and tcx links the interface (0 once detached); for cgroup links the low
/// half of the cgroup id (0 once detached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    /// The link's own id.
    pub id: u32,
    pub prog_id: u32,
    pub ifindex: u32,
}

impl LinkInfo {
    /// True while the link is attached to its hook (an interface or a cgroup).
    pub const fn attached(&self) -> bool {
        self.ifindex != 0
    }
}

/// `BPF_LINK_TYPE_XDP`.
pub const LINK_TYPE_XDP: u32 = 6;

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // type, id, prog_id, padding, then the per-type union (8-byte aligned).
    let info = obj_info::<64>(link)?;
    let at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().expect("4 bytes"));
    Ok(LinkInfo {
        link_type: at(0),
        id: at(4),
        prog_id: at(8),
        ifindex: at(16),
    })
}

const BPF_PROG_QUERY: libc::c_long = 16;
/// `BPF_F_QUERY_EFFECTIVE`: include programs inherited from ancestor cgroups.
pub const QUERY_EFFECTIVE: u32 = 1;

/// The ids of the programs attached to `target` (a cgroup directory's fd) at `attach_type`
/// (BPF_PROG_QUERY).
pub fn prog_query(target: BorrowedFd<'_>, attach_type: u32, flags: u32) -> io::Result<Vec<u32>> {
    #[repr(C)]
    struct Attr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let mut ids = vec![0u32; 256];
    let mut attr = Attr {
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        query_flags: flags,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _pad: 0,
        prog_attach_flags: 0,
        link_ids: 0,
        link_attach_flags: 0,
        revision: 0,
    };
    // SAFETY: as in `bpf`; the kernel writes at most prog_cnt ids and updates prog_cnt.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &raw mut attr,
            size_of::<Attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let count = attr.prog_cnt as usize;
    ids.truncate(count.min(256));
    Ok(ids)
}

const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches a link from its hook (BPF_LINK_DETACH): the program stops running there while
/// the link object (and its pin) stays. `guard unload` does not need it; tests use it to
/// show what `guard doctor` says of a detached link.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    bpf(
        BPF_LINK_DETACH,
        &Attr {
            link_fd: link.as_raw_fd() as u32,
        },
    )
    .map(drop)
}
