//! The one packet parser, for XDP (ingress) and TC (egress) alike: Ethernet (up to
//! [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags), IPv4 with options, IPv6 with up to
//! [`MAX_IPV6_EXT_HEADERS`] extension headers, then the transport: the ports of TCP, UDP and
//! UDP-Lite, the type of ICMP and ICMPv6 messages, and nothing more of any other protocol
//! (which is judged as a whole).
//!
//! Every read goes through a [`Header`], whose bounds are checked once, as the verifier
//! needs; only the fields the verdict uses are read.

use aya_ebpf::programs::{TcContext, XdpContext};
use guard_common::{
    FlowKey, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, IPPROTO_UDPLITE, PROTO_IDX_TCP, PROTO_IDX_UDP,
};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// [`Flow::proto_idx`] of protocols without ports: judged by protocol and source only.
pub const PROTO_IDX_NONE: u32 = u32::MAX;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// VLAN tags walked (802.1Q, and QinQ with an 802.1ad outer tag).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the verdict gives up with [`ParseError::Unsupported`].
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// A context whose packet bytes the parser can read.
pub trait Packet {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// An IP address as four 32-bit words holding its 16 bytes in order (IPv4 addresses
/// IPv4-mapped): words, not bytes, so the compiler moves, compares and spills it four
/// words at a time (Rust must assume a packet's words unaligned, so each is assembled once,
/// in the parse, from two 16-bit loads: [`load16`]).
pub type Addr = [u32; 4];

/// The bytes of `a`, in order.
#[inline(always)]
pub fn addr_bytes(a: &Addr) -> &[u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size, and u8's alignment is 1.
    unsafe { &*(a.as_ptr() as *const [u8; 16]) }
}

/// The third word of every IPv4-mapped address (`::ffff:0:0/96`).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// A judged packet's facts. Addresses are [`Addr`]s, IPv4 ones IPv4-mapped.
pub struct Flow {
    /// [`PROTO_IDX_TCP`] or [`PROTO_IDX_UDP`] (UDP-Lite too) for protocols judged by port,
    /// [`PROTO_IDX_NONE`] for the others.
    pub proto_idx: u32,
    /// The IP protocol number.
    pub ip_proto: u8,
    /// True for IPv4. (IPv6 packets with an IPv4-mapped source are malformed.)
    pub v4: bool,
    pub src: Addr,
    pub dst: Addr,
    /// 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for the others).
    pub tcp_flags: u8,
    /// The frame's length as the IP header states it (link header + IP length), at most
    /// the bytes received: what the byte counters count, so padding or trailing junk beyond
    /// the IP packet is not counted.
    pub len: u32,
}

impl Flow {
    /// A packet's facts before its transport header is read (no ports, no flags).
    #[inline(always)]
    const fn new(ip_proto: u8, v4: bool, src: Addr, dst: Addr, len: u32) -> Self {
        Self {
            proto_idx: PROTO_IDX_NONE,
            ip_proto,
            v4,
            src,
            dst,
            sport: 0,
            dport: 0,
            tcp_flags: 0,
            len,
        }
    }

    pub const fn has_ports(&self) -> bool {
        self.proto_idx != PROTO_IDX_NONE
    }
    /// The flow key of an inbound packet: the remote end is the source.
    pub fn ingress_key(&self) -> FlowKey {
        FlowKey {
            remote: *addr_bytes(&self.src),
            local_port: self.dport,
            remote_port: self.sport,
            proto: self.ip_proto,
            _pad0: 0,
            _pad1: 0,
        }
    }

    /// The flow key of an outbound packet: the remote end is the destination.
    pub fn egress_key(&self) -> FlowKey {
        FlowKey {
            remote: *addr_bytes(&self.dst),
            local_port: self.sport,
            remote_port: self.dport,
            proto: self.ip_proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

pub enum Parsed {
    /// An IP packet to judge: by port (TCP, UDP, UDP-Lite), or by protocol (ICMP echo
    /// requests and every other IP protocol).
    Flow(Flow),
    /// Not IP: ARP, LLDP, ...
    NotIp,
    /// An ICMP or ICMPv6 message other than an echo request.
    IcmpControl,
    /// A fragment after the first of a protocol judged by port (or of ICMP): it carries no
    /// ports. Later fragments of other protocols are judged by protocol like first ones.
    LaterFragment,
}

pub enum ParseError {
    /// A header is cut short or inconsistent.
    Malformed,
    /// Deeper than the parser walks (more VLAN tags or IPv6 extension headers).
    Unsupported,
}

/// A header of `N` bytes inside the packet, its bounds checked once ([`header`]); its
/// fields are then read one by one, only those the parser needs (copying whole headers out
/// byte by byte cost more than the parse itself).
#[derive(Clone, Copy)]
struct Header<const N: usize> {
    at: *const u8,
}

/// The 16 bits at `at` in memory order, with one BPF load whatever the address's alignment.
///
/// Rust must assume a `u16` read may be misaligned here (a driver or an earlier program
/// decides where the packet starts), so it would assemble the value from two byte loads
/// and a shift; BPF's own 16-bit packet load has no alignment requirement on the
/// architectures whose verifier accepts it unaligned (x86-64, arm64), and every field read
/// here is at an even offset, which even a strict-alignment verifier accepts (it assumes
/// `NET_IP_ALIGN` packets).
///
/// # Safety
/// `at` and `at + 1` lie within the packet, bounds checked for the verifier.
#[inline(always)]
unsafe fn load16(at: *const u8) -> u16 {
    let value: u64;
    // SAFETY: a plain packet load the verifier checks against the bounds the caller
    // established; it writes no memory and touches no flags.
    unsafe {
        core::arch::asm!(
            "{0} = *(u16 *)({1} + 0)",
            out(reg) value,
            in(reg) at,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    value as u16
}

impl<const N: usize> Header<N> {
    /// Byte `i` (every caller passes a constant below `N`).
    #[inline(always)]
    fn u8(self, i: usize) -> u8 {
        // SAFETY: `i < N` at every call site, and the `N` bytes from `at` lie within the
        // packet ([`header`] checked them).
        unsafe { *self.at.add(i) }
    }

    /// Bytes `i`, `i + 1` as the u16 that holds them in memory order.
    #[inline(always)]
    fn ne16(self, i: usize) -> u16 {
        // SAFETY: `i + 1 < N` at every call site; the `N` bytes lie within the packet.
        unsafe { load16(self.at.add(i)) }
    }

    /// The big-endian u16 at bytes `i`, `i + 1`.
    #[inline(always)]
    fn be16(self, i: usize) -> u16 {
        u16::from_be(self.ne16(i))
    }

    /// Bytes `i..i + 4`, as the word that holds them in memory order.
    #[inline(always)]
    fn word(self, i: usize) -> u32 {
        let (first, second) = (self.ne16(i).to_ne_bytes(), self.ne16(i + 2).to_ne_bytes());
        u32::from_ne_bytes([first[0], first[1], second[0], second[1]])
    }

    /// Bytes `i..i + 16` (an IPv6 address).
    #[inline(always)]
    fn addr16(self, i: usize) -> Addr {
        [
            self.word(i),
            self.word(i + 4),
            self.word(i + 8),
            self.word(i + 12),
        ]
    }
}

/// The `N`-byte header at `offset`, or `Malformed` when the packet is shorter.
#[inline(always)]
fn header<const N: usize, C: Packet>(ctx: &C, offset: usize) -> Result<Header<N>, ParseError> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + N > end {
        core::hint::cold_path();
        return Err(ParseError::Malformed);
    }
    Ok(Header {
        at: (start + offset) as *const u8,
    })
}

#[inline(always)]
pub fn parse<C: Packet>(ctx: &C) -> Result<Parsed, ParseError> {
    parse_then(ctx, |parsed| parsed)
}

/// [`parse`], its result handed to `then` in each branch of the parse: `then` is inlined
/// once per IP family, so the code after the parse is specialised for IPv4 (one address
/// word, constant family tests) instead of running one merged copy for both families.
#[inline(always)]
pub fn parse_then<C: Packet, R>(ctx: &C, then: impl FnOnce(Result<Parsed, ParseError>) -> R) -> R {
    let (ethertype, offset) = match link(ctx) {
        Ok(link) => link,
        Err(err) => return then(Err(err)),
    };
    match ethertype {
        ETH_P_8021Q | ETH_P_8021AD => then(Err(ParseError::Unsupported)),
        ETH_P_IPV4 => then(parse_ipv4(ctx, offset)),
        ETH_P_IPV6 => then(parse_ipv6(ctx, offset)),
        _ => then(Ok(Parsed::NotIp)),
    }
}

/// The ethertype after the VLAN tags walked, and the offset of what it names.
#[inline(always)]
fn link<C: Packet>(ctx: &C) -> Result<(u16, usize), ParseError> {
    let eth = header::<ETH_HLEN, C>(ctx, 0)?;
    let mut ethertype = eth.be16(12);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        core::hint::cold_path();
        let tag = header::<4, C>(ctx, offset)?;
        ethertype = tag.be16(2);
        offset += 4;
    }
    Ok((ethertype, offset))
}

/// The IPv4 address at bytes `i..i + 4` of `ip`, IPv4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
fn mapped(ip: Header<20>, i: usize) -> Addr {
    [0, 0, V4_MAPPED_WORD, ip.word(i)]
}

/// True for `::ffff:a.b.c.d`.
#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// The bytes the byte counters count: up to the end of the IP packet as its header states
/// it, never more than was received.
#[inline(always)]
fn counted_len<C: Packet>(ctx: &C, ip_end: usize) -> u32 {
    let frame = ctx.end() - ctx.start();
    (if ip_end == 0 || ip_end > frame {
        frame
    } else {
        ip_end
    }) as u32
}

#[inline(always)]
fn parse_ipv4<C: Packet>(ctx: &C, offset: usize) -> Result<Parsed, ParseError> {
    let ip = header::<20, C>(ctx, offset)?;
    let version_ihl = ip.u8(0);
    if version_ihl >> 4 != 4 {
        core::hint::cold_path();
        return Err(ParseError::Malformed);
    }
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    let total_len = ip.be16(2) as usize;
    if header_len < 20 || total_len < header_len {
        core::hint::cold_path();
        return Err(ParseError::Malformed);
    }
    let ip_proto = ip.u8(9);
    let flow = Flow::new(
        ip_proto,
        true,
        mapped(ip, 12),
        mapped(ip, 16),
        counted_len(ctx, offset + total_len),
    );
    if ip.be16(6) & 0x1fff != 0 {
        core::hint::cold_path();
        return Ok(later_fragment(ip_proto, flow));
    }
    parse_l4(ctx, offset + header_len, flow)
}

#[inline(always)]
fn parse_ipv6<C: Packet>(ctx: &C, offset: usize) -> Result<Parsed, ParseError> {
    let ip = header::<40, C>(ctx, offset)?;
    if ip.u8(0) >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let src = ip.addr16(8);
    if src[0] == 0 && src[1] == 0 && src[2] == V4_MAPPED_WORD {
        core::hint::cold_path();
        // No host sends these; the kernel's IPv6 stack drops them (RFC 4291 and
        // draft-itojun-v6ops-v4mapped-harmful), and so does guard, before they could be judged
        // by rules written for either family.
        return Err(ParseError::Malformed);
    }
    let dst = ip.addr16(24);
    let payload_len = ip.be16(4) as usize;
    // A jumbogram states 0: count what was received.
    let ip_end = if payload_len == 0 {
        0
    } else {
        offset + 40 + payload_len
    };
    let mut next = ip.u8(6);
    let mut offset = offset + 40;
    // One more round than headers walked: the last may only find the transport.
    for round in 0..=MAX_IPV6_EXT_HEADERS {
        let header_len = match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT | IPV6_AH => {
                core::hint::cold_path();
                if round == MAX_IPV6_EXT_HEADERS {
                    return Err(ParseError::Unsupported);
                }
                let ext = header::<4, C>(ctx, offset)?;
                let ext_next = ext.u8(0);
                if next == IPV6_FRAGMENT && ext.be16(2) >> 3 != 0 {
                    // A later fragment: judged here, without walking further (the rest of
                    // the chain, if any, is in the first fragment).
                    return match ext_next {
                        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT | IPV6_AH => {
                            Ok(Parsed::LaterFragment)
                        }
                        ip_proto => Ok(later_fragment(
                            ip_proto,
                            v6_flow(ctx, ip_proto, src, dst, ip_end),
                        )),
                    };
                }
                let len = match next {
                    IPV6_FRAGMENT => 8,
                    IPV6_AH => (ext.u8(1) as usize + 2) * 4,
                    _ => (ext.u8(1) as usize + 1) * 8,
                };
                next = ext_next;
                len
            }
            _ => return parse_l4(ctx, offset, v6_flow(ctx, next, src, dst, ip_end)),
        };
        offset += header_len;
    }
    Err(ParseError::Unsupported)
}

/// The flow of an IPv6 packet before its transport is read.
#[inline(always)]
fn v6_flow<C: Packet>(ctx: &C, ip_proto: u8, src: Addr, dst: Addr, ip_end: usize) -> Flow {
    Flow::new(ip_proto, false, src, dst, counted_len(ctx, ip_end))
}

/// A fragment after the first: protocols judged by port (and ICMP) pass as
/// [`Parsed::LaterFragment`]; any other protocol is judged by protocol like a first fragment.
#[inline(always)]
fn later_fragment(ip_proto: u8, flow: Flow) -> Parsed {
    match ip_proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            Parsed::LaterFragment
        }
        _ => Parsed::Flow(flow),
    }
}

/// Reads the transport header at `offset` into `flow`: the ports of TCP, UDP and UDP-Lite,
/// the type of ICMP messages; nothing of other protocols.
#[inline(always)]
fn parse_l4<C: Packet>(ctx: &C, offset: usize, mut flow: Flow) -> Result<Parsed, ParseError> {
    let (sport, dport) = match flow.ip_proto {
        IPPROTO_TCP => {
            let tcp = header::<20, C>(ctx, offset)?;
            if tcp.u8(12) >> 4 < 5 {
                core::hint::cold_path();
                return Err(ParseError::Malformed);
            }
            flow.proto_idx = PROTO_IDX_TCP;
            flow.tcp_flags = tcp.u8(13);
            (tcp.be16(0), tcp.be16(2))
        }
        IPPROTO_UDP | IPPROTO_UDPLITE => {
            let udp = header::<8, C>(ctx, offset)?;
            flow.proto_idx = PROTO_IDX_UDP;
            (udp.be16(0), udp.be16(2))
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type, code and checksum: every ICMP message has them. (A one-byte header
            // compiles to a bounds check the verifier does not follow.)
            let icmp = header::<4, C>(ctx, offset)?;
            let echo = if flow.ip_proto == IPPROTO_ICMP {
                ICMP_ECHO_REQUEST
            } else {
                ICMPV6_ECHO_REQUEST
            };
            if icmp.u8(0) != echo {
                return Ok(Parsed::IcmpControl);
            }
            return Ok(Parsed::Flow(flow));
        }
        _ => return Ok(Parsed::Flow(flow)),
    };
    flow.sport = sport;
    flow.dport = dport;
    Ok(Parsed::Flow(flow))
}
