//! The one packet parser, for XDP (ingress) and TC (egress) alike: Ethernet (up to
//! [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags), IPv4 with options, IPv6 with up to
//! [`MAX_IPV6_EXT_HEADERS`] extension headers, then TCP or UDP.
//!
//! Every read goes through [`read`], which checks the bounds the verifier needs.

use aya_ebpf::programs::{TcContext, XdpContext};
use guard_common::{FlowKey, PROTO_IDX_TCP, PROTO_IDX_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

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

/// A TCP or UDP packet's facts. Addresses are 16 bytes, IPv4 ones IPv4-mapped.
pub struct Flow {
    pub proto_idx: u32,
    pub v4: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl Flow {
    pub const fn ip_proto(&self) -> u8 {
        if self.proto_idx == PROTO_IDX_TCP {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        }
    }
    /// The flow key of an inbound packet: the remote end is the source.
    pub fn ingress_key(&self) -> FlowKey {
        FlowKey {
            remote: self.src,
            local_port: self.dport,
            remote_port: self.sport,
            proto: self.ip_proto(),
            _pad: [0; 3],
        }
    }

    /// The flow key of an outbound packet: the remote end is the destination.
    pub fn egress_key(&self) -> FlowKey {
        FlowKey {
            remote: self.dst,
            local_port: self.sport,
            remote_port: self.dport,
            proto: self.ip_proto(),
            _pad: [0; 3],
        }
    }
}

pub enum Parsed {
    Flow(Flow),
    /// Not TCP or UDP over IP: ARP, ICMP, other IP protocols.
    Other,
    /// An IPv4 or IPv6 fragment after the first: it carries no ports.
    LaterFragment,
}

pub enum ParseError {
    /// A header is cut short or inconsistent.
    Malformed,
    /// Deeper than the parser walks (more VLAN tags or IPv6 extension headers).
    Unsupported,
}

/// `N` bytes at `offset`, or `Malformed` when the packet is shorter.
#[inline(always)]
fn read<const N: usize, C: Packet>(ctx: &C, offset: usize) -> Result<[u8; N], ParseError> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + N > end {
        return Err(ParseError::Malformed);
    }
    // SAFETY: the range [start + offset, start + offset + N) lies within the packet, checked
    // above; [u8; N] has alignment 1.
    Ok(unsafe { *((start + offset) as *const [u8; N]) })
}

#[inline(always)]
pub fn parse<C: Packet>(ctx: &C) -> Result<Parsed, ParseError> {
    let eth = read::<ETH_HLEN, C>(ctx, 0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = read::<4, C>(ctx, offset)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        offset += 4;
    }
    match ethertype {
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseError::Unsupported),
        ETH_P_IPV4 => parse_ipv4(ctx, offset),
        ETH_P_IPV6 => parse_ipv6(ctx, offset),
        _ => Ok(Parsed::Other),
    }
}

#[inline(always)]
fn mapped(a: &[u8]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[inline(always)]
fn parse_ipv4<C: Packet>(ctx: &C, offset: usize) -> Result<Parsed, ParseError> {
    let ip = read::<20, C>(ctx, offset)?;
    if ip[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let header_len = ((ip[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if header_len < 20 || total_len < header_len {
        return Err(ParseError::Malformed);
    }
    let proto_idx = match ip[9] {
        IPPROTO_TCP => PROTO_IDX_TCP,
        IPPROTO_UDP => PROTO_IDX_UDP,
        _ => return Ok(Parsed::Other),
    };
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return Ok(Parsed::LaterFragment);
    }
    parse_l4(
        ctx,
        offset + header_len,
        proto_idx,
        true,
        mapped(&ip[12..16]),
        mapped(&ip[16..20]),
    )
}

#[inline(always)]
fn parse_ipv6<C: Packet>(ctx: &C, offset: usize) -> Result<Parsed, ParseError> {
    let ip = read::<40, C>(ctx, offset)?;
    if ip[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut offset = offset + 40;
    // One more round than headers walked: the last may only find TCP, UDP or another protocol.
    for round in 0..=MAX_IPV6_EXT_HEADERS {
        let header_len = match next {
            IPPROTO_TCP => return parse_l4(ctx, offset, PROTO_IDX_TCP, false, src, dst),
            IPPROTO_UDP => return parse_l4(ctx, offset, PROTO_IDX_UDP, false, src, dst),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT | IPV6_AH => {
                if round == MAX_IPV6_EXT_HEADERS {
                    return Err(ParseError::Unsupported);
                }
                let ext = read::<4, C>(ctx, offset)?;
                let len = match next {
                    IPV6_FRAGMENT => {
                        if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                            return Ok(Parsed::LaterFragment);
                        }
                        8
                    }
                    IPV6_AH => (ext[1] as usize + 2) * 4,
                    _ => (ext[1] as usize + 1) * 8,
                };
                next = ext[0];
                len
            }
            _ => return Ok(Parsed::Other),
        };
        offset += header_len;
    }
    Err(ParseError::Unsupported)
}

#[inline(always)]
fn parse_l4<C: Packet>(
    ctx: &C,
    offset: usize,
    proto_idx: u32,
    v4: bool,
    src: [u8; 16],
    dst: [u8; 16],
) -> Result<Parsed, ParseError> {
    let (ports, tcp_flags) = if proto_idx == PROTO_IDX_TCP {
        let tcp = read::<20, C>(ctx, offset)?;
        if tcp[12] >> 4 < 5 {
            return Err(ParseError::Malformed);
        }
        ([tcp[0], tcp[1], tcp[2], tcp[3]], tcp[13])
    } else {
        let udp = read::<8, C>(ctx, offset)?;
        ([udp[0], udp[1], udp[2], udp[3]], 0)
    };
    Ok(Parsed::Flow(Flow {
        proto_idx,
        v4,
        src,
        dst,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        tcp_flags,
    }))
}
