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
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    #[repr(C, align(8))]
    struct Info([u8; PROG_INFO_LEN]);
    let mut info = Info([0; PROG_INFO_LEN]);
    let attr = Attr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: PROG_INFO_LEN as u32,
        info: info.0.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    let at =
        |offset: usize| u64::from_ne_bytes(info.0[offset..offset + 8].try_into().expect("8 bytes"));
    Ok((at(PROG_INFO_RUN_CNT), at(PROG_INFO_RUN_TIME_NS)))
}
