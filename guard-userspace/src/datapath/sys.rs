//! The bpf(2) commands guard needs that aya has no API for: opening a pinned link as a plain
//! fd, pinning a held link fd again, replacing a link's program atomically, a link's info
//! (its interface: 0 once detached), querying a cgroup's programs, and detaching a link.
//! The attribute and info layouts are aya's generated kernel bindings, not hand offsets.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type};

/// `BPF_F_QUERY_EFFECTIVE`: include programs inherited from ancestor cgroups.
pub const QUERY_EFFECTIVE: u32 = aya_obj::generated::BPF_F_QUERY_EFFECTIVE;

/// `BPF_LINK_TYPE_XDP`.
pub const LINK_TYPE_XDP: u32 = bpf_link_type::BPF_LINK_TYPE_XDP as u32;

/// An all-zero attribute union (what the kernel expects in the fields a command ignores).
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain-old-data union of integers; all zeros is valid.
    unsafe { std::mem::zeroed() }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr of the size given; the kernel reads
    // (and for some commands writes) only within it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

/// Opens the bpf object pinned at `path` (BPF_OBJ_GET).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = c.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the bpf object `fd` at `path` (BPF_OBJ_PIN): a link the daemon holds is pinned
/// again after its pin was removed.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = c.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Makes the link `link` run `prog` instead of its current program, atomically
/// (BPF_LINK_UPDATE): each packet or call sees either the old or the new program.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_update.link_fd = link.as_raw_fd() as u32;
    attr.link_update.__bindgen_anon_1.new_prog_fd = prog.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
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

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // SAFETY: bpf_link_info is plain-old-data; all zeros is valid.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = link.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_link_info>() as u32;
    attr.info.info = (&raw mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        link_type: info.type_,
        id: info.id,
        prog_id: info.prog_id,
        // The first word of the per-type union: the interface of XDP and tcx links, the
        // low half of the cgroup id of cgroup links.
        // SAFETY: reading a plain integer the kernel filled (or left zero).
        ifindex: unsafe { info.__bindgen_anon_1.xdp.ifindex },
    })
}

/// The ids of the programs attached to `target` (a cgroup directory's fd) at `attach_type`
/// (BPF_PROG_QUERY).
pub fn prog_query(target: BorrowedFd<'_>, attach_type: u32, flags: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 256];
    let mut attr = zeroed_attr();
    // The kernel writes at most prog_cnt ids into `ids` and updates prog_cnt.
    attr.query.__bindgen_anon_1.target_fd = target.as_raw_fd() as u32;
    attr.query.attach_type = attach_type;
    attr.query.query_flags = flags;
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    attr.query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
    bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)?;
    // SAFETY: reading the count the kernel wrote.
    let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
    ids.truncate(count.min(256));
    Ok(ids)
}

/// Detaches a link from its hook (BPF_LINK_DETACH): the program stops running there while
/// the link object (and its pin) stays. `guard unload` does not need it; tests use it to
/// show what `guard doctor` says of a detached link.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_detach.link_fd = link.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// True when `e` says the kernel has no batch operations for this map (before 5.6, or a
/// map type without them): the caller writes entry by entry instead.
pub fn batch_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(libc::ENOSYS)
    ) || e.raw_os_error() == Some(524) // ENOTSUPP, the kernel-internal "not supported"
}

/// BPF_MAP_UPDATE_BATCH: sets `keys[i]` to `values[i]` for every i in one call (`keys` and
/// `values` are the map's own key and value types, so the element sizes match the map's).
pub fn update_batch<K, V>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    update_batch_raw(map, keys, values.as_ptr() as u64)
}

/// BPF_MAP_UPDATE_BATCH of `keys`, their values at `values` (as many as the map takes per
/// key). The caller keeps the values alive until the call returns.
fn update_batch_raw<K>(map: BorrowedFd<'_>, keys: &[K], values: u64) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = zeroed_attr();
    // Writing a union field is safe; the kernel reads `count` keys and values from these
    // pointers, which live until the call returns.
    attr.batch.map_fd = map.as_raw_fd() as u32;
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values;
    attr.batch.count = keys.len() as u32;
    bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr).map(drop)
}

/// BPF_MAP_DELETE_BATCH: deletes every key of `keys` in one call (hash maps).
pub fn delete_batch<K>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = zeroed_attr();
    attr.batch.map_fd = map.as_raw_fd() as u32;
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.count = keys.len() as u32;
    bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr).map(drop)
}

/// BPF_MAP_LOOKUP_BATCH over an array map: fills `values` with the values at indices
/// `first..first + values.len()` (`V` is the map's value type). Fails with `ENOENT` when the
/// range runs past the map's end.
pub fn lookup_batch_array<V>(map: BorrowedFd<'_>, first: u32, values: &mut [V]) -> io::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(values.len()).map_err(io::Error::other)?;
    let mut keys = vec![0u32; values.len()];
    // The batch starts after the key `in_batch` points at (none: from the first).
    let previous: u32 = first.wrapping_sub(1);
    let mut out_batch: u32 = 0;
    let mut attr = zeroed_attr();
    attr.batch.map_fd = map.as_raw_fd() as u32;
    attr.batch.in_batch = if first == 0 {
        0
    } else {
        &previous as *const u32 as u64
    };
    attr.batch.out_batch = &mut out_batch as *mut u32 as u64;
    attr.batch.keys = keys.as_mut_ptr() as u64;
    attr.batch.values = values.as_mut_ptr() as u64;
    attr.batch.count = count;
    bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr)?;
    // SAFETY: reading back the union field the kernel wrote.
    let got = unsafe { attr.batch.count };
    if got != count || keys.first() != Some(&first) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("batch lookup returned {got} of {count} entries"),
        ));
    }
    Ok(())
}

/// BPF_MAP_UPDATE_BATCH on a per-CPU map: `values` holds `cpus` values per key, key after
/// key (`V` is the map's value type, 8-byte aligned in size, as the kernel lays out per-CPU
/// values).
pub fn update_batch_per_cpu<K, V>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
    cpus: usize,
) -> io::Result<()> {
    assert_eq!(keys.len() * cpus, values.len(), "cpus values per key");
    assert_eq!(size_of::<V>() % 8, 0, "per-CPU values are 8-byte aligned");
    update_batch_raw(map, keys, values.as_ptr() as u64)
}
