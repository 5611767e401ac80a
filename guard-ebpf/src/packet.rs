//! The one packet parser: Ethernet (up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags), IPv4 with
//! options, IPv6 with up to [`MAX_IPV6_EXT_HEADERS`] extension headers, then TCP or UDP.
//!
//! Every read goes through [`read`], which checks the bounds the verifier needs.

use aya_ebpf::programs::XdpContext;
use guard_common::{PROTO_IDX_TCP, PROTO_IDX_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// VLAN tags walked (802.1Q, and QinQ with an 802.1ad outer tag).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the verdict gives up with [`ParseError::Unsupported`].
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// A TCP or UDP packet's facts the verdict needs.
pub struct Flow {
    pub proto_idx: u32,
    pub src: Source,
    pub dport: u16,
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
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return Err(ParseError::Malformed);
    }
    // SAFETY: the range [start + offset, start + offset + N) lies within the packet, checked
    // above; [u8; N] has alignment 1.
    Ok(unsafe { *((start + offset) as *const [u8; N]) })
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, ParseError> {
    let eth = read::<ETH_HLEN>(ctx, 0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = read::<4>(ctx, offset)?;
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
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<Parsed, ParseError> {
    let ip = read::<20>(ctx, offset)?;
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
    let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return Ok(Parsed::LaterFragment);
    }
    let src = Source::V4([ip[12], ip[13], ip[14], ip[15]]);
    parse_l4(ctx, offset + header_len, proto_idx, src)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<Parsed, ParseError> {
    let ip = read::<40>(ctx, offset)?;
    if ip[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let mut next = ip[6];
    let mut offset = offset + 40;
    // One more round than headers walked: the last may only find TCP, UDP or another protocol.
    for round in 0..=MAX_IPV6_EXT_HEADERS {
        let header_len = match next {
            IPPROTO_TCP => return parse_l4(ctx, offset, PROTO_IDX_TCP, Source::V6(src)),
            IPPROTO_UDP => return parse_l4(ctx, offset, PROTO_IDX_UDP, Source::V6(src)),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT | IPV6_AH => {
                if round == MAX_IPV6_EXT_HEADERS {
                    return Err(ParseError::Unsupported);
                }
                let ext = read::<4>(ctx, offset)?;
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
fn parse_l4(
    ctx: &XdpContext,
    offset: usize,
    proto_idx: u32,
    src: Source,
) -> Result<Parsed, ParseError> {
    let dport = if proto_idx == PROTO_IDX_TCP {
        let tcp = read::<20>(ctx, offset)?;
        if tcp[12] >> 4 < 5 {
            return Err(ParseError::Malformed);
        }
        u16::from_be_bytes([tcp[2], tcp[3]])
    } else {
        let udp = read::<8>(ctx, offset)?;
        u16::from_be_bytes([udp[2], udp[3]])
    };
    Ok(Parsed::Flow(Flow {
        proto_idx,
        src,
        dport,
    }))
}
