//! Addresses in a policy: zones, `from`/`to` lists, CIDRs and addresses, IPv4-mapped IPv6
//! networks turned into the IPv4 networks they map.

use std::{collections::BTreeMap, net::IpAddr, ops::Range};

use ipnet::IpNet;
use toml::Spanned;

use super::{
    raw::RawPolicy,
    validate::{ANY, Findings, any_v4, any_v6},
};

pub(super) type ZoneTable = BTreeMap<String, (Range<usize>, Vec<IpNet>)>;

pub(super) fn zones(raw: &RawPolicy, f: &mut Findings) -> ZoneTable {
    let mut table = ZoneTable::new();
    for (name, cidrs) in &raw.zones {
        let zone = name.get_ref();
        if zone == ANY {
            f.error(
                name.span(),
                "`any` is built in (every address) and cannot be redefined",
            );
            continue;
        }
        if zone.is_empty()
            || !zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            f.error(
                name.span(),
                format!("invalid zone name `{zone}`: use letters, digits, '_' and '-'"),
            );
            continue;
        }
        if cidrs.get_ref().is_empty() {
            f.warn(
                cidrs.span(),
                format!("zone `{zone}` is empty: rules from it match nothing"),
            );
        }
        let nets = cidrs.get_ref().iter().filter_map(|c| cidr(c, f)).collect();
        table.insert(zone.clone(), (name.span(), nets));
    }
    table
}

/// A CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address (`192.0.2.7`, `2001:db8::1`).
pub(super) fn cidr(text: &Spanned<String>, f: &mut Findings) -> Option<IpNet> {
    let s = text.get_ref().trim();
    let net = if s.contains('/') {
        match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => {
                f.error(
                    text.span(),
                    format!(
                        "invalid CIDR `{s}`: expected an address/prefix like 10.0.0.0/8 or fd00::/8"
                    ),
                );
                return None;
            }
        }
    } else {
        match s.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                f.error(
                    text.span(),
                    format!("invalid address `{s}`: expected an IPv4/IPv6 address or CIDR"),
                );
                return None;
            }
        }
    };
    if net.trunc() != net {
        f.error(
            text.span(),
            format!(
                "CIDR `{s}` has host bits set; did you mean {}?",
                net.trunc()
            ),
        );
        return None;
    }
    Some(unmapped(net, text.span(), f))
}

/// The IPv4-mapped IPv6 range `::ffff:0:0/96`.
pub(super) const V4_MAPPED: ipnet::Ipv6Net =
    match ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
        Ok(net) => net,
        Err(_) => panic!("valid prefix"),
    };

/// guard judges IPv4-mapped IPv6 addresses as IPv4, so an IPv4-mapped network is the IPv4
/// network it maps (said in a warning). An IPv6 network that contains the mapped range
/// without being it (e.g. `::/64`) keeps its IPv6 part; a warning says its mapped part is
/// judged by the IPv4 rules.
pub(super) fn unmapped(net: IpNet, span: Range<usize>, f: &mut Findings) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    if V4_MAPPED.contains(&v6) {
        let v4 = v6.addr().to_ipv4_mapped().expect("inside ::ffff:0:0/96");
        let net =
            IpNet::V4(ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix at most 32"));
        f.warn(
            span,
            format!("IPv4-mapped `{v6}` is judged as the IPv4 network {net}"),
        );
        return net;
    }
    if v6.prefix_len() > 0 && v6.contains(&V4_MAPPED) {
        f.warn(
            span,
            format!(
                "`{v6}` contains the IPv4-mapped range {V4_MAPPED}, which guard judges as IPv4: name the IPv4 networks too if they are meant"
            ),
        );
    }
    net
}

/// A `from`/`to` list: zone names, `any`, CIDRs and addresses. Returns the entries as
/// written and the networks they resolve to (sorted, de-duplicated); `None` after an error.
pub(super) fn peers(
    list: &[Spanned<String>],
    name: &str,
    zones: &ZoneTable,
    f: &mut Findings,
) -> Option<(Vec<String>, Vec<IpNet>)> {
    let errors_before = f.errors.len();
    let mut sources = Vec::new();
    for entry in list {
        let text = entry.get_ref();
        if text == ANY {
            sources.extend([any_v4(), any_v6()]);
        } else if let Some((_, nets)) = zones.get(text.as_str()) {
            sources.extend(nets.iter().copied());
        } else if text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_hexdigit() || c == ':')
            && (text.contains('.') || text.contains(':'))
        {
            sources.extend(cidr(entry, f));
        } else {
            let known: Vec<&str> = zones.keys().map(String::as_str).collect();
            f.error(
                entry.span(),
                format!(
                    "unknown zone `{text}` in rule `{name}` (zones defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
    }
    sources.sort();
    sources.dedup();
    (f.errors.len() == errors_before)
        .then(|| (list.iter().map(|s| s.get_ref().clone()).collect(), sources))
}
