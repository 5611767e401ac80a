//! Crafted packets for BPF_PROG_TEST_RUN, built with etherparse where it can and by hand
//! where a test needs a header etherparse will not write (truncations, odd extension chains).

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{PacketBuilder, VlanId};

const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// A TCP SYN from `src` to `dport` over IPv4.
pub fn tcp4(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), [198, 18, 0, 1], 64)
        .tcp(40000, dport, 1, 1024)
        .syn();
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).expect("write packet");
    out
}

/// A UDP datagram from `src` to `dport` over IPv4 with `payload`.
pub fn udp4(src: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), [198, 18, 0, 1], 64)
        .udp(40000, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("write packet");
    out
}

/// A TCP SYN from `src` to `dport` over IPv6.
pub fn tcp6(src: Ipv6Addr, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(src.octets(), Ipv6Addr::LOCALHOST.octets(), 64)
        .tcp(40000, dport, 1, 1024)
        .syn();
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).expect("write packet");
    out
}

/// A UDP datagram from `src` to `dport` over IPv6.
pub fn udp6(src: Ipv6Addr, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(src.octets(), Ipv6Addr::LOCALHOST.octets(), 64)
        .udp(40000, dport);
    let mut out = Vec::with_capacity(b.size(4));
    b.write(&mut out, b"ping").expect("write packet");
    out
}

/// `tcp4` inside one 802.1Q tag.
pub fn tcp4_vlan(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .single_vlan(VlanId::try_new(7).expect("vlan id"))
        .ipv4(src.octets(), [198, 18, 0, 1], 64)
        .tcp(40000, dport, 1, 1024)
        .syn();
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).expect("write packet");
    out
}

/// An ARP request (not IP).
pub fn arp() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&[0xff; 6]);
    p.extend_from_slice(&SRC_MAC);
    p.extend_from_slice(&[0x08, 0x06]);
    p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    p.extend_from_slice(&SRC_MAC);
    p.extend_from_slice(&[198, 18, 0, 2]);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&[198, 18, 0, 1]);
    p
}

/// Byte offset of the IPv4 header in the untagged packets above.
pub const IP_OFFSET: usize = 14;

// ---- raw construction, for headers etherparse will not write ----

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A transport header (and payload) to put inside an IP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// Another IP protocol (e.g. ICMPv6 = 58) with these bytes.
    Other {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Other { proto, .. } => *proto,
        }
    }

    /// Length of the transport header (the bytes a parser must see to judge the ports).
    pub fn header_len(&self) -> usize {
        match self {
            L4::Tcp { .. } => 20,
            L4::Udp { .. } => 8,
            L4::Other { .. } => 0,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = *flags;
                t[14..16].copy_from_slice(&1024u16.to_be_bytes());
                t
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut u = vec![0u8; 8];
                u[0..2].copy_from_slice(&sport.to_be_bytes());
                u[2..4].copy_from_slice(&dport.to_be_bytes());
                u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(payload);
                u
            }
            L4::Other { bytes, .. } => bytes.clone(),
        }
    }
}

/// An Ethernet frame with `ethertype` and `payload`.
pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `frame` with VLAN tags inserted after the MAC addresses, outermost first (each a TPID:
/// 0x8100 for 802.1Q, 0x88a8 for 802.1ad).
pub fn with_vlans(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for (i, tpid) in tpids.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// An IPv4 packet in an Ethernet frame: `option_words` 32-bit words of options (IHL 5 +
/// option_words), the fragment field `(offset in 8-byte units, more fragments)`. The header
/// checksum is valid, so the frame also passes the kernel's IP input; the L4 checksum is
/// not computed (guard never reads it).
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    option_words: u8,
    fragment: (u16, bool),
    l4: &L4,
) -> Vec<u8> {
    let body = l4.bytes();
    let header_len = 20 + 4 * usize::from(option_words);
    let mut ip = vec![0u8; header_len];
    ip[0] = 0x40 | (5 + option_words);
    ip[2..4].copy_from_slice(&((header_len + body.len()) as u16).to_be_bytes());
    let frag = fragment.0 & 0x1fff | if fragment.1 { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = l4.proto();
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    for b in &mut ip[20..] {
        *b = 1; // NOP options
    }
    let checksum = ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    ip.extend_from_slice(&body);
    eth(0x0800, &ip)
}

/// The RFC 1071 checksum of an IPv4 header whose checksum field is zero.
fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv6 extension header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options with `n` extra 8-byte units.
    HopByHop(u8),
    Routing(u8),
    DestOpts(u8),
    /// Fragment header: offset in 8-byte units, more fragments.
    Fragment(u16, bool),
    /// Authentication header with payload-length field `n` ((n + 2) * 4 bytes).
    Ah(u8),
}

impl Ext {
    pub fn kind(self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::Routing(_) => 43,
            Ext::DestOpts(_) => 60,
            Ext::Fragment(..) => 44,
            Ext::Ah(_) => 51,
        }
    }

    /// Bytes the header takes.
    pub fn size(self) -> usize {
        match self {
            Ext::HopByHop(n) | Ext::Routing(n) | Ext::DestOpts(n) => (usize::from(n) + 1) * 8,
            Ext::Fragment(..) => 8,
            Ext::Ah(n) => (usize::from(n) + 2) * 4,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        let mut b = vec![0u8; self.size()];
        b[0] = next;
        match self {
            Ext::HopByHop(n) | Ext::Routing(n) | Ext::DestOpts(n) | Ext::Ah(n) => b[1] = n,
            Ext::Fragment(offset, more) => {
                b[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
            }
        }
        b
    }
}

/// An IPv6 packet in an Ethernet frame with extension headers `exts` before `l4`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, exts: &[Ext], l4: &L4) -> Vec<u8> {
    let mut payload = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(l4.proto(), |e| e.kind());
        payload.extend(ext.bytes(next));
    }
    payload.extend(l4.bytes());
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    ip[6] = exts.first().map_or(l4.proto(), |e| e.kind());
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    ip.extend(payload);
    eth(0x86dd, &ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-built IPv4 header carries the checksum etherparse computes for it, with and
    /// without options, so frames built here survive the kernel's IP input.
    #[test]
    fn hand_built_ipv4_headers_carry_a_valid_checksum() {
        for option_words in [0, 3] {
            let l4 = L4::Tcp {
                sport: 40000,
                dport: 22,
                flags: TCP_SYN,
            };
            let frame = ipv4(
                Ipv4Addr::new(198, 18, 0, 2),
                Ipv4Addr::new(198, 18, 0, 1),
                option_words,
                (0, false),
                &l4,
            );
            let (header, _) =
                etherparse::Ipv4Header::from_slice(&frame[IP_OFFSET..]).expect("an IPv4 header");
            assert_eq!(header.header_checksum, header.calc_header_checksum());
            assert_ne!(header.header_checksum, 0);
        }
    }
}
