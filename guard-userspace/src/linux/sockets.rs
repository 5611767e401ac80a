//! The host's listening sockets, read as `ss -tulpn` reads them: a NETLINK_SOCK_DIAG dump of
//! TCP sockets in LISTEN and unconnected bound UDP sockets, IPv4 and IPv6, in the calling
//! thread's network namespace; each socket's owning processes come from `/proc/*/fd`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

use guard_common::Proto;

/// A listening TCP socket or a bound, unconnected UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Listener {
    pub proto: Proto,
    pub address: IpAddr,
    pub port: u16,
    /// The socket's inode (what `/proc/PID/fd/N` links to as `socket:[INODE]`).
    pub inode: u32,
    pub uid: u32,
    /// The interface the socket is bound to (SO_BINDTODEVICE), 0 when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub ifindex: u32,
    /// Processes holding the socket open (empty when it could not be told: the socket's
    /// owner exited, or it lives in another PID namespace).
    pub processes: Vec<Process>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

impl Listener {
    /// True when the socket only accepts traffic addressed to a loopback address.
    pub fn loopback_only(&self) -> bool {
        // `::ffff:127.0.0.1` is a loopback address too.
        self.address.to_canonical().is_loopback()
    }
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
/// What an unconnected UDP socket's state reads as.
const UDP_UNCONNECTED: u32 = 7;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_msg` (linux/inet_diag.h).
const DIAG_MSG_LEN: usize = 72;

/// The `struct inet_diag_req_v2` dump request for one family and protocol, with its
/// netlink header.
fn request(family: u8, protocol: u8, states: u32, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + 56;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, protocol, 0, 0]);
    m.extend_from_slice(&states.to_ne_bytes());
    m.resize(len, 0); // inet_diag_sockid: all zero, match any
    m
}

/// One parsed `inet_diag_msg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagMsg {
    pub family: u8,
    pub state: u8,
    pub address: IpAddr,
    pub port: u16,
    pub ifindex: u32,
    pub uid: u32,
    pub inode: u32,
}

/// What a dump reply buffer held: messages, and whether the dump is over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub messages: Vec<DiagMsg>,
    pub done: bool,
}

/// Parses one buffer of netlink messages answering a sock_diag dump.
pub fn parse_reply(buf: &[u8]) -> io::Result<Parsed> {
    let mut out = Parsed::default();
    let mut at = 0;
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    while at + NLMSG_HDR_LEN <= buf.len() {
        let len = u32_at(buf, at) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < NLMSG_HDR_LEN || at + len > buf.len() {
            return Err(io::Error::other(format!(
                "sock_diag: malformed netlink message (length {len} at offset {at} of {})",
                buf.len()
            )));
        }
        let body = &buf[at + NLMSG_HDR_LEN..at + len];
        match kind {
            NLMSG_DONE => {
                out.done = true;
                return Ok(out);
            }
            NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= DIAG_MSG_LEN => {
                let family = body[0];
                // inet_diag_sockid at 4: sport (be16), dport, src[16], dst[16], if, cookie.
                let port = u16::from_be_bytes([body[4], body[5]]);
                let src: [u8; 16] = body[8..24].try_into().expect("16 bytes");
                let address = if i32::from(family) == libc::AF_INET {
                    IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
                } else {
                    IpAddr::V6(Ipv6Addr::from(src))
                };
                out.messages.push(DiagMsg {
                    family,
                    state: body[1],
                    address,
                    port,
                    ifindex: u32_at(body, 40),
                    uid: u32_at(body, 64),
                    inode: u32_at(body, 68),
                });
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        at += (len + 3) & !3;
    }
    Ok(out)
}

/// Dumps the sockets of one family and protocol in the given states.
fn dump(family: u8, protocol: u8, states: u32) -> io::Result<Vec<DiagMsg>> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink};
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    let req = request(family, protocol, states, 1);
    // The kernel is a netlink socket's default destination.
    rustix::net::send(&fd, &req, SendFlags::empty())?;
    let mut messages = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty()) {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(messages);
        }
        let parsed = parse_reply(&buf[..n])?;
        messages.extend(parsed.messages);
        if parsed.done {
            return Ok(messages);
        }
    }
}

/// Every listening TCP socket and bound unconnected UDP socket of this network namespace,
/// with their processes, sorted by protocol, port and address.
pub fn listeners() -> io::Result<Vec<Listener>> {
    let mut found = sockets()?;
    add_owners(&mut found);
    Ok(found)
}

/// Fills in the processes of `listeners` (a scan of every process's open files).
pub fn add_owners(listeners: &mut [Listener]) {
    let owners = socket_owners(listeners.iter().map(|l| l.inode).collect());
    for l in listeners {
        l.processes = owners.get(&l.inode).cloned().unwrap_or_default();
    }
}

/// As [`listeners`], without the processes (no scan of `/proc`).
pub fn sockets() -> io::Result<Vec<Listener>> {
    let mut found = Vec::new();
    // UDP-Lite sockets are judged as UDP (policy and `[listen]` alike), so they are listed as
    // UDP. Its dump is optional: a kernel without UDP-Lite has no such sockets.
    for (proto, ip_proto, states, required) in [
        (Proto::Tcp, libc::IPPROTO_TCP, 1u32 << TCP_LISTEN, true),
        (Proto::Udp, libc::IPPROTO_UDP, 1u32 << UDP_UNCONNECTED, true),
        (
            Proto::Udp,
            libc::IPPROTO_UDPLITE,
            1u32 << UDP_UNCONNECTED,
            false,
        ),
    ] {
        for family in [libc::AF_INET, libc::AF_INET6] {
            let msgs = match dump(family as u8, ip_proto as u8, states) {
                Ok(msgs) => msgs,
                Err(_) if !required => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("sock_diag dump of {proto} sockets (family {family}): {e}"),
                    ));
                }
            };
            for m in msgs.into_iter().filter(|m| m.port != 0) {
                found.push(Listener {
                    proto,
                    address: m.address,
                    port: m.port,
                    inode: m.inode,
                    uid: m.uid,
                    ifindex: m.ifindex,
                    processes: Vec::new(),
                });
            }
        }
    }
    found.sort();
    found.dedup_by(|a, b| a.inode == b.inode);
    Ok(found)
}

/// The processes holding each of `inodes` open, from `/proc/*/fd` (a process we cannot
/// read is skipped).
pub fn socket_owners(inodes: BTreeSet<u32>) -> BTreeMap<u32, Vec<Process>> {
    let mut owners: BTreeMap<u32, Vec<Process>> = BTreeMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return owners;
    };
    for process in all.flatten() {
        let Ok(fds) = process.fd() else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let procfs::process::FDTarget::Socket(inode) = fd.target else {
                continue;
            };
            let Some(inode) = u32::try_from(inode).ok().filter(|i| inodes.contains(i)) else {
                continue;
            };
            let comm = comm
                .get_or_insert_with(|| process.stat().map(|s| s.comm).unwrap_or_default())
                .clone();
            let pid = process.pid as u32;
            let list = owners.entry(inode).or_default();
            if !list.iter().any(|p| p.pid == pid) {
                list.push(Process { pid, comm });
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR_LEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn diag(family: u8, state: u8, addr: &[u8], port: u16, uid: u32, inode: u32) -> Vec<u8> {
        let mut b = vec![0u8; DIAG_MSG_LEN];
        b[0] = family;
        b[1] = state;
        b[4..6].copy_from_slice(&port.to_be_bytes());
        b[8..8 + addr.len()].copy_from_slice(addr);
        b[64..68].copy_from_slice(&uid.to_ne_bytes());
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        b
    }

    #[test]
    fn request_is_a_dump_of_one_family_and_protocol() {
        let r = request(libc::AF_INET6 as u8, libc::IPPROTO_UDP as u8, 1 << 7, 9);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x301);
        assert_eq!(
            &r[16..20],
            &[libc::AF_INET6 as u8, libc::IPPROTO_UDP as u8, 0, 0]
        );
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 1 << 7);
    }

    #[test]
    fn replies_parse_into_sockets_and_end_at_done() {
        let mut buf = message(
            SOCK_DIAG_BY_FAMILY,
            &diag(libc::AF_INET as u8, 10, &[127, 0, 0, 1], 8080, 1000, 42),
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        buf.extend(message(
            SOCK_DIAG_BY_FAMILY,
            &diag(libc::AF_INET6 as u8, 10, &v6, 443, 0, 43),
        ));
        buf.extend(message(NLMSG_DONE, &[0; 4]));
        let parsed = parse_reply(&buf).unwrap();
        assert!(parsed.done);
        assert_eq!(parsed.messages.len(), 2);
        assert_eq!(parsed.messages[0].address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            (
                parsed.messages[0].port,
                parsed.messages[0].uid,
                parsed.messages[0].inode
            ),
            (8080, 1000, 42)
        );
        assert_eq!(parsed.messages[1].address, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(parsed.messages[1].port, 443);
    }

    #[test]
    fn errors_and_truncation_are_reported() {
        let err = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_reply(&err).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        let mut cut = message(SOCK_DIAG_BY_FAMILY, &[0; DIAG_MSG_LEN]);
        cut.truncate(40);
        assert!(
            parse_reply(&cut)
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        // A partial buffer without DONE is not the end.
        assert!(!parse_reply(&[]).unwrap().done);
    }

    #[test]
    fn this_process_listener_is_found_with_its_owner() {
        // Unprivileged: sock_diag dumps are open to every user for their own namespace.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = u.local_addr().unwrap().port();
        let all = listeners().unwrap();
        let me = std::process::id();
        let tcp = all
            .iter()
            .find(|s| s.proto == Proto::Tcp && s.port == port)
            .expect("own TCP listener");
        assert!(tcp.loopback_only());
        assert!(tcp.processes.iter().any(|p| p.pid == me), "{tcp:?}");
        assert!(all.iter().any(|s| s.proto == Proto::Udp && s.port == uport));
    }
}
