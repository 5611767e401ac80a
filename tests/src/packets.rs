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
