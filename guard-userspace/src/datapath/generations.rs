//! The policy maps' contents for one policy generation, and the writes that turn what a
//! generation holds into what a new policy needs.
//!
//! The policy maps are double-buffered (see `guard_common::maps`): a policy change writes
//! the inactive generation, then flips the active-generation map, so the programs stay loaded
//! and only the entries that differ are written. This module is the pure part of that: from
//! a [`Lowered`] policy to the exact entries of generation `g` ([`Contents::of`]), and from
//! old entries to new ones ([`Delta::between`]). `bpf.rs` performs the writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use guard_common::{
    CLASS_BITS, ClassLens, DIRECT_BLOCKS, DIRECT_RULES_LEN, DIRECT16_LEN, DirectBlock, GuardConfig,
    POLICY_PORTS_LEN, PORT_DIRECT, PORT_VALUE_MASK, PORTS_LEN, PROTOS_LEN, RuleRef, SRC_ZONES_LEN,
    SrcBucketV6, SrcHashKeyV4, SrcHashKeyV6, SrcKeyV4, SrcKeyV6, SrcSlotV6, TABLE_V6_MAX_BITS,
    TABLE_V6_WAYS, gen_index, src_zone_bit, table_v6_buckets,
};

use crate::policy::Lowered;

/// Every entry one generation puts in the policy maps, at its absolute map index or key
/// (generation offsets applied). Entries not listed are zero (arrays) or absent (hashes,
/// tries).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contents {
    pub config: GuardConfig,
    pub ports: BTreeMap<u32, u32>,
    pub protos: BTreeMap<u32, u32>,
    pub listen: BTreeSet<u32>,
    pub port_slots: BTreeMap<u32, u32>,
    pub class_lens: BTreeMap<u32, ClassLens>,
    pub hash_v4: HashMap<SrcHashKeyV4, RuleRef>,
    pub hash_v6: HashMap<SrcHashKeyV6, RuleRef>,
    pub trie_v4: HashMap<(u32, SrcKeyV4), RuleRef>,
    pub trie_v6: HashMap<(u32, SrcKeyV6), RuleRef>,
    /// The words of [`guard_common::maps::SRC_ZONES`]: which first-16-bit blocks of each
    /// family some source prefix of the generation may contain.
    pub src_zones: BTreeMap<u32, u64>,
    /// The direct source tables ([`guard_common::maps::SRC_DIRECT16`], `SRC_DIRECT24`,
    /// `SRC_DIRECT_RULES`).
    pub direct16: BTreeMap<u32, u32>,
    pub direct24: BTreeMap<u32, DirectBlock>,
    pub direct_rules: BTreeMap<u32, RuleRef>,
    /// The buckets of [`guard_common::maps::SRC_TABLE_V6`] that hold entries.
    pub table_v6: BTreeMap<u32, SrcBucketV6>,
}

/// An IPv6 address as two big-endian halves.
pub fn halves(addr: &[u8; 16]) -> (u64, u64) {
    let (hi, lo) = addr.split_at(8);
    (
        u64::from_be_bytes(hi.try_into().expect("8 bytes")),
        u64::from_be_bytes(lo.try_into().expect("8 bytes")),
    )
}

/// The two-choice table ([`table_v6_buckets`]) of `entries` as generation `generation` of
/// `2^bits` buckets: the non-empty buckets, or `None` when the entries do not all fit (the
/// generation then has no table, and the hash map answers).
pub fn table_v6(
    entries: &HashMap<SrcHashKeyV6, RuleRef>,
    generation: u32,
    bits: u32,
) -> Option<BTreeMap<u32, SrcBucketV6>> {
    if bits == 0 || bits > TABLE_V6_MAX_BITS {
        return None;
    }
    let buckets_len = 1usize << bits;
    if entries.len() > buckets_len * TABLE_V6_WAYS * 9 / 10 {
        return None;
    }
    let mut buckets = vec![SrcBucketV6::default(); buckets_len];
    // In key order, so a policy always gets the same table.
    let mut sorted: Vec<(&SrcHashKeyV6, &RuleRef)> = entries.iter().collect();
    sorted.sort_unstable_by_key(|(k, _)| (k.class, k.prefix_len, k.addr));
    let place = |buckets: &mut [SrcBucketV6], b: u32, slot: SrcSlotV6| match buckets[b as usize]
        .0
        .iter_mut()
        .find(|s| s.class == 0)
    {
        Some(free) => {
            *free = slot;
            true
        }
        None => false,
    };
    let mut walk: u32 = 0x2545_F491;
    'keys: for (key, rule) in sorted {
        let (hi, lo) = halves(&key.addr);
        let mut slot = SrcSlotV6 {
            class: key.class,
            prefix_len: key.prefix_len,
            hi,
            lo,
            rule: *rule,
        };
        // Cuckoo insertion: a full pair of buckets gives up one of its slots, which moves
        // to its own other bucket; a few hundred moves at most.
        for _ in 0..500 {
            let (a, b) = table_v6_buckets(slot.class, slot.prefix_len, slot.hi, slot.lo, bits);
            if place(&mut buckets, a, slot) || place(&mut buckets, b, slot) {
                continue 'keys;
            }
            walk ^= walk << 13;
            walk ^= walk >> 17;
            walk ^= walk << 5;
            let bucket = if walk & 1 == 0 { a } else { b };
            let way = (walk >> 1) as usize % TABLE_V6_WAYS;
            std::mem::swap(&mut slot, &mut buckets[bucket as usize].0[way]);
        }
        return None;
    }
    Some(
        buckets
            .into_iter()
            .enumerate()
            .filter(|(_, b)| *b != SrcBucketV6::default())
            .map(|(i, b)| (gen_index(generation, buckets_len as u32, i as u32), b))
            .collect(),
    )
}

/// Sets, in `words` (generation `generation` of `SRC_ZONES`), the bit of every first-16-bit
/// block that a prefix of `len` bits at `addr` (its first 16 bits: `top16`) overlaps.
fn mark_zone(words: &mut BTreeMap<u32, u64>, generation: u32, v4: bool, top16: u16, len: u32) {
    let span: u32 = if len >= 16 { 1 } else { 1 << (16 - len) };
    let first = if len >= 16 {
        u32::from(top16)
    } else {
        u32::from(top16) & !(span - 1)
    };
    for block in first..first + span {
        let (word, bit) = src_zone_bit(v4, block as u16);
        *words
            .entry(gen_index(generation, SRC_ZONES_LEN, word))
            .or_default() |= 1 << bit;
    }
}

/// The `SRC_ZONES` words of generation `generation` for `lowered`'s IPv6 source prefixes
/// (IPv4 peers are sorted by the direct tables).
fn src_zones(lowered: &Lowered, generation: u32) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for (k, _) in &lowered.src_hash_v6 {
        let top16 = u16::from_be_bytes([k.addr[0], k.addr[1]]);
        mark_zone(&mut words, generation, false, top16, k.prefix_len);
    }
    for (len, k, _) in &lowered.src_v6 {
        let top16 = u16::from_be_bytes([k.addr[0], k.addr[1]]);
        mark_zone(
            &mut words,
            generation,
            false,
            top16,
            len.saturating_sub(CLASS_BITS),
        );
    }
    words
}

impl Contents {
    /// The entries of `lowered` as generation `generation` with `classes_per_generation`
    /// class slots each: generation `g`'s class `c` is `g * classes_per_generation + c`, so
    /// the class-keyed maps (lengths, hashes, tries) hold both generations without overlap.
    pub fn of(lowered: &Lowered, generation: u32, classes_per_generation: u32) -> Self {
        let offset = (generation & 1) * classes_per_generation;
        let class = |c: u32| c + offset;
        let port_value = |value: u32| {
            if value & PORT_DIRECT == 0 && value & PORT_VALUE_MASK != 0 {
                value + offset
            } else {
                value
            }
        };
        let direct = &lowered.direct_v4;
        Self {
            config: GuardConfig {
                direct_class_offset: offset,
                ..lowered.config
            },
            ports: lowered
                .ports
                .iter()
                .map(|&(i, v)| (gen_index(generation, POLICY_PORTS_LEN, i), port_value(v)))
                .collect(),
            protos: lowered
                .protos
                .iter()
                .map(|&(i, v)| (gen_index(generation, PROTOS_LEN, i), port_value(v)))
                .collect(),
            listen: lowered
                .listen
                .iter()
                .map(|&i| gen_index(generation, PORTS_LEN, i))
                .collect(),
            port_slots: lowered
                .port_slots
                .iter()
                .map(|&(i, slot)| (gen_index(generation, PORTS_LEN, i), slot))
                .collect(),
            class_lens: lowered
                .class_lens
                .iter()
                .map(|&(c, lens)| (class(c), lens))
                .collect(),
            hash_v4: lowered
                .src_hash_v4
                .iter()
                .map(|&(k, v)| {
                    let key = SrcHashKeyV4 {
                        class: class(k.class),
                        ..k
                    };
                    (key, v)
                })
                .collect(),
            hash_v6: lowered
                .src_hash_v6
                .iter()
                .map(|&(k, v)| {
                    let key = SrcHashKeyV6 {
                        class: class(k.class),
                        ..k
                    };
                    (key, v)
                })
                .collect(),
            trie_v4: lowered
                .src_v4
                .iter()
                .map(|&(len, k, v)| {
                    let c = class(u32::from_be_bytes(k.class)).to_be_bytes();
                    ((len, SrcKeyV4 { class: c, ..k }), v)
                })
                .collect(),
            trie_v6: lowered
                .src_v6
                .iter()
                .map(|&(len, k, v)| {
                    let c = class(u32::from_be_bytes(k.class)).to_be_bytes();
                    ((len, SrcKeyV6 { class: c, ..k }), v)
                })
                .collect(),
            src_zones: src_zones(lowered, generation),
            direct16: direct
                .first
                .iter()
                .map(|&(b, v)| (gen_index(generation, DIRECT16_LEN, b), v))
                .collect(),
            direct24: direct
                .blocks
                .iter()
                .enumerate()
                .map(|(i, &block)| (gen_index(generation, DIRECT_BLOCKS, i as u32), block))
                .collect(),
            direct_rules: direct
                .rules
                .iter()
                .map(|&(i, r)| (gen_index(generation, DIRECT_RULES_LEN, i), r))
                .collect(),
            // Added by [`Contents::with_table_v6`], which knows the instance's table size
            // (`Capacity::contents` does both).
            table_v6: BTreeMap::new(),
        }
    }

    /// The same contents without array entries whose value is zero (what reading the
    /// kernel's arrays back yields: a zero entry is indistinguishable from an unset one).
    /// These contents with generation `generation`'s two-choice table of IPv6 source
    /// entries, `2^bits` buckets; without one (`table_v6_bits` 0) when `bits` is 0 or the
    /// entries do not fit.
    pub fn with_table_v6(mut self, generation: u32, bits: u32) -> Self {
        match table_v6(&self.hash_v6, generation, bits) {
            Some(table) => {
                self.table_v6 = table;
                self.config.table_v6_bits = bits;
            }
            None => {
                self.table_v6.clear();
                self.config.table_v6_bits = 0;
            }
        }
        self
    }

    pub fn without_zeros(&self) -> Self {
        let mut c = self.clone();
        c.ports.retain(|_, v| *v != 0);
        c.protos.retain(|_, v| *v != 0);
        c.port_slots.retain(|_, v| *v != 0);
        c.class_lens.retain(|_, v| *v != ClassLens::default());
        c.src_zones.retain(|_, v| *v != 0);
        c.direct16.retain(|_, v| *v != 0);
        c.direct24.retain(|_, v| *v != DirectBlock::default());
        c.direct_rules.retain(|_, v| *v != RuleRef::default());
        c.table_v6.retain(|_, v| *v != SrcBucketV6::default());
        c
    }

    /// Entries of the source hashes and tries (what their capacity must hold).
    pub fn source_entries(&self) -> [usize; 4] {
        [
            self.hash_v4.len(),
            self.hash_v6.len(),
            self.trie_v4.len(),
            self.trie_v6.len(),
        ]
    }
}

/// Writes that turn one generation's entries into another's: array entries to set (zero
/// for entries the new contents lack), hash and trie keys to delete, then to insert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub config: Option<GuardConfig>,
    pub ports: Vec<(u32, u32)>,
    pub protos: Vec<(u32, u32)>,
    pub listen: Vec<(u32, u32)>,
    pub port_slots: Vec<(u32, u32)>,
    pub class_lens: Vec<(u32, ClassLens)>,
    pub hash_v4: Changes<SrcHashKeyV4>,
    pub hash_v6: Changes<SrcHashKeyV6>,
    pub trie_v4: Changes<(u32, SrcKeyV4)>,
    pub trie_v6: Changes<(u32, SrcKeyV6)>,
    pub src_zones: Vec<(u32, u64)>,
    pub direct16: Vec<(u32, u32)>,
    pub direct24: Vec<(u32, DirectBlock)>,
    pub direct_rules: Vec<(u32, RuleRef)>,
    pub table_v6: Vec<(u32, SrcBucketV6)>,
}

/// Deletions and insertions (or updates) for one keyed map.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes<K> {
    pub delete: Vec<K>,
    pub insert: Vec<(K, RuleRef)>,
}

impl<K> Default for Changes<K> {
    fn default() -> Self {
        Self {
            delete: Vec::new(),
            insert: Vec::new(),
        }
    }
}

fn array_changes<V: Copy + PartialEq + Default>(
    old: &BTreeMap<u32, V>,
    new: &BTreeMap<u32, V>,
) -> Vec<(u32, V)> {
    let cleared = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .map(|&k| (k, V::default()));
    let set = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(&k, &v)| (k, v));
    cleared.chain(set).collect()
}

fn keyed_changes<K: Copy + Eq + std::hash::Hash>(
    old: &HashMap<K, RuleRef>,
    new: &HashMap<K, RuleRef>,
) -> Changes<K> {
    Changes {
        delete: old
            .keys()
            .filter(|k| !new.contains_key(k))
            .copied()
            .collect(),
        insert: new
            .iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .map(|(&k, &v)| (k, v))
            .collect(),
    }
}

impl Delta {
    /// Entries this delta writes, per map that has any (by `guard_common::maps` name).
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        use guard_common::maps;
        let keyed = |c: usize, d: usize| c + d;
        [
            (maps::CONFIG, usize::from(self.config.is_some())),
            (maps::PORTS, self.ports.len()),
            (maps::PROTOS, self.protos.len()),
            (maps::LISTEN, self.listen.len()),
            (maps::PORT_SLOTS, self.port_slots.len()),
            (maps::CLASS_LENS, self.class_lens.len()),
            (maps::SRC_ZONES, self.src_zones.len()),
            (maps::SRC_DIRECT16, self.direct16.len()),
            (maps::SRC_DIRECT24, self.direct24.len()),
            (maps::SRC_DIRECT_RULES, self.direct_rules.len()),
            (maps::SRC_TABLE_V6, self.table_v6.len()),
            (
                maps::SRC_HASH_V4,
                keyed(self.hash_v4.delete.len(), self.hash_v4.insert.len()),
            ),
            (
                maps::SRC_HASH_V6,
                keyed(self.hash_v6.delete.len(), self.hash_v6.insert.len()),
            ),
            (
                maps::SRC_V4,
                keyed(self.trie_v4.delete.len(), self.trie_v4.insert.len()),
            ),
            (
                maps::SRC_V6,
                keyed(self.trie_v6.delete.len(), self.trie_v6.insert.len()),
            ),
        ]
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .collect()
    }

    /// The writes that make a generation holding `old` hold `new`.
    pub fn between(old: &Contents, new: &Contents) -> Self {
        let listen_old: BTreeMap<u32, u32> = old.listen.iter().map(|&i| (i, 1)).collect();
        let listen_new: BTreeMap<u32, u32> = new.listen.iter().map(|&i| (i, 1)).collect();
        Self {
            config: (old.config != new.config).then_some(new.config),
            ports: array_changes(&old.ports, &new.ports),
            protos: array_changes(&old.protos, &new.protos),
            listen: array_changes(&listen_old, &listen_new),
            port_slots: array_changes(&old.port_slots, &new.port_slots),
            class_lens: array_changes(&old.class_lens, &new.class_lens),
            hash_v4: keyed_changes(&old.hash_v4, &new.hash_v4),
            hash_v6: keyed_changes(&old.hash_v6, &new.hash_v6),
            trie_v4: keyed_changes(&old.trie_v4, &new.trie_v4),
            trie_v6: keyed_changes(&old.trie_v6, &new.trie_v6),
            src_zones: array_changes(&old.src_zones, &new.src_zones),
            direct16: array_changes(&old.direct16, &new.direct16),
            direct24: array_changes(&old.direct24, &new.direct24),
            direct_rules: array_changes(&old.direct_rules, &new.direct_rules),
            table_v6: array_changes(&old.table_v6, &new.table_v6),
        }
    }

    /// How many map writes (updates and deletes) the delta is.
    pub fn writes(&self) -> usize {
        usize::from(self.config.is_some())
            + self.ports.len()
            + self.protos.len()
            + self.listen.len()
            + self.port_slots.len()
            + self.class_lens.len()
            + self.src_zones.len()
            + self.direct16.len()
            + self.direct24.len()
            + self.direct_rules.len()
            + self.table_v6.len()
            + self.hash_v4.delete.len()
            + self.hash_v4.insert.len()
            + self.hash_v6.delete.len()
            + self.hash_v6.insert.len()
            + self.trie_v4.delete.len()
            + self.trie_v4.insert.len()
            + self.trie_v6.delete.len()
            + self.trie_v6.insert.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, Lowered};

    fn lowered(text: &str) -> Lowered {
        let checked = policy::check("t.toml", text).unwrap_or_else(|e| panic!("{e}"));
        policy::lower(&checked.policy)
    }

    fn lowered_after(previous: &Lowered, text: &str) -> Lowered {
        let checked = policy::check("t.toml", text).unwrap_or_else(|e| panic!("{e}"));
        policy::lower_after(&checked.policy, &previous.rules, &previous.slots)
    }

    const ZONES: &str = r#"
version = 1
mode = "enforce"
default = "deny"
interfaces = ["lo"]
failsafe_ports = []
[zones]
admin = ["198.18.1.0/24", "2001:db8::/32"]
lan = ["198.18.0.0/16"]
[[ingress]]
name = "ssh-admin"
proto = "tcp"
ports = [22]
from = ["admin"]
[[ingress]]
name = "web"
proto = "tcp"
ports = [80, 443]
from = ["any"]
[[ingress]]
name = "dns-lan"
proto = "udp"
ports = [53]
from = ["lan"]
[listen]
tcp = [22, 80, 443]
"#;

    #[test]
    fn generation_one_is_offset_from_generation_zero() {
        let l = lowered(ZONES);
        let (g0, g1) = (Contents::of(&l, 0, 100), Contents::of(&l, 1, 100));
        assert_eq!(
            (g0.config.direct_class_offset, g1.config.direct_class_offset),
            (0, 100)
        );
        assert_eq!(
            GuardConfig {
                direct_class_offset: 100,
                ..g0.config
            },
            g1.config
        );
        assert_eq!(g0.ports.len(), g1.ports.len());
        for ((i0, v0), (i1, v1)) in g0.ports.iter().zip(&g1.ports) {
            assert_eq!(i1 - i0, POLICY_PORTS_LEN);
            if v0 & PORT_DIRECT == 0 && v0 & PORT_VALUE_MASK != 0 {
                assert_eq!(v1 - v0, 100, "class entries move by the class offset");
            } else {
                assert_eq!(v1, v0, "direct rules and flags stay");
            }
        }
        for (i0, i1) in g0.listen.iter().zip(&g1.listen) {
            assert_eq!(i1 - i0, PORTS_LEN);
        }
        assert!(!g0.hash_v4.is_empty(), "the zone rules use the source hash");
        for key in g1.hash_v4.keys() {
            assert!(key.class > 100, "generation 1's classes start after 100");
        }
        for key in g0.hash_v4.keys() {
            assert!(key.class < 100);
        }
        let (c0, c1): (Vec<_>, Vec<_>) = (
            g0.class_lens.keys().collect(),
            g1.class_lens.keys().collect(),
        );
        assert!(c0.iter().zip(&c1).all(|(a, b)| *b - *a == 100));
    }

    #[test]
    fn the_same_policy_needs_no_writes_and_an_empty_generation_needs_all() {
        let l = lowered(ZONES);
        let g = Contents::of(&l, 1, 64);
        assert_eq!(Delta::between(&g, &g).writes(), 0);
        let fill = Delta::between(&Contents::default(), &g);
        assert_eq!(
            fill.writes(),
            1 + g.ports.len()
                + g.protos.len()
                + g.listen.len()
                + g.port_slots.len()
                + g.class_lens.len()
                + g.src_zones.len()
                + g.hash_v4.len()
                + g.hash_v6.len()
                + g.direct16.len()
                + g.direct24.len()
                + g.direct_rules.len()
        );
        assert!(!g.direct_rules.is_empty(), "the zones have direct rows");
        let clear = Delta::between(&g, &Contents::of(&Lowered::default(), 1, 64));
        assert!(clear.ports.iter().all(|&(_, v)| v == 0));
        assert_eq!(clear.hash_v4.delete.len(), g.hash_v4.len());
        assert!(clear.hash_v4.insert.is_empty());
        assert!(clear.src_zones.iter().all(|&(_, v)| v == 0));
    }

    #[test]
    fn a_rule_on_a_new_low_port_keeps_the_other_classes_ids() {
        // 200 zone rules on ports 6000-6199; then one more, on port 100, from another zone.
        let mut text = String::from(
            "interfaces = [\"lo\"]\nfailsafe_ports = []\n[zones]\nlan = [\"198.18.0.0/16\"]\nadmin = [\"198.18.9.0/24\"]\n",
        );
        for i in 0..200 {
            text += &format!(
                "[[ingress]]\nname = \"r{i}\"\nproto = \"tcp\"\nports = [{}]\nfrom = [\"lan\", \"10.0.{i}.0/24\"]\n",
                6000 + i
            );
        }
        let before = lowered(&text);
        let plus = format!(
            "{text}[[ingress]]\nname = \"low\"\nproto = \"tcp\"\nports = [100]\nfrom = [\"admin\"]\n"
        );
        let checked = policy::check("t.toml", &plus).unwrap();
        let renumbered = policy::lower_after(&checked.policy, &before.rules, &before.slots);
        let kept = policy::lower_after_classes(
            &checked.policy,
            &before.rules,
            &before.slots,
            &before.class_ids,
        );
        let (old, all, few) = (
            Contents::of(&before, 0, 512),
            Contents::of(&renumbered, 0, 512),
            Contents::of(&kept, 0, 512),
        );
        let (all, few) = (Delta::between(&old, &all), Delta::between(&old, &few));
        assert!(
            all.writes() > 400,
            "without the previous ids every class moves: {}",
            all.writes()
        );
        // With them only the new port's entries, and the direct row of the region the new
        // zone makes (198.18.9.0/24: lan's 200 classes and the new one).
        let rows = few.direct_rules.len();
        assert!(rows <= 201, "one new row: {rows}");
        assert!(few.writes() - rows < 10, "{few:?}");
        // The same verdicts either way: the contents differ by class numbering only.
        assert_eq!(kept.classes, renumbered.classes);
        assert_eq!(kept.src_hash_v4.len(), renumbered.src_hash_v4.len());
    }

    #[test]
    fn the_zone_bits_cover_every_source_prefix_and_nothing_else() {
        let l = lowered(ZONES);
        let g = Contents::of(&l, 1, 64);
        let bit = |v4: bool, top16: u16| {
            let (word, bit) = guard_common::src_zone_bit(v4, top16);
            g.src_zones
                .get(&gen_index(1, SRC_ZONES_LEN, word))
                .is_some_and(|w| w & (1 << bit) != 0)
        };
        // admin = 198.18.1.0/24 and 2001:db8::/32; lan = 198.18.0.0/16. IPv4 sources are
        // sorted by the direct tables: their half stays clear.
        assert!(!bit(true, u16::from_be_bytes([198, 18])));
        assert!(bit(false, 0x2001));
        assert!(!bit(false, 0x2002));
        // A prefix shorter than 16 bits marks every block it spans; /0 marks all.
        let wide = lowered(&ZONES.replace("\"198.18.0.0/16\"", "\"10.0.0.0/8\", \"::/0\""));
        let w = Contents::of(&wide, 0, 64);
        let count = |v4: bool| {
            (0..=u16::MAX)
                .filter(|&t| {
                    let (word, bit) = guard_common::src_zone_bit(v4, t);
                    w.src_zones
                        .get(&gen_index(0, SRC_ZONES_LEN, word))
                        .is_some_and(|x| x & (1 << bit) != 0)
                })
                .count()
        };
        assert_eq!(count(true), 0, "IPv4: the direct tables");
        assert_eq!(count(false), 65536, "::/0");
        // The direct tables' first level names exactly the /16s IPv4 prefixes touch.
        let touched = |c: &Contents, g: u32| {
            (0..=u16::MAX)
                .filter(|&t| {
                    c.direct16
                        .contains_key(&gen_index(g, DIRECT16_LEN, u32::from(t)))
                })
                .count()
        };
        assert_eq!(touched(&g, 1), 1, "198.18/16");
        assert_eq!(touched(&w, 0), 256 + 1, "10.0.0.0/8 and 198.18.1.0/24");
    }

    #[test]
    fn a_one_rule_change_writes_only_its_entries() {
        let before = lowered(ZONES);
        let text = ZONES.replace("ports = [80, 443]", "ports = [80, 443, 8443]");
        let after = lowered_after(&before, &text);
        let delta = Delta::between(&Contents::of(&before, 0, 64), &Contents::of(&after, 0, 64));
        // Port 8443 gets the web rule (a direct entry) and a counter slot; nothing else moves.
        assert_eq!(delta.config, None);
        assert_eq!(delta.ports.len(), 1, "{delta:?}");
        assert_eq!(delta.port_slots.len(), 1, "{delta:?}");
        assert_eq!(delta.writes(), 2, "{delta:?}");
    }

    #[test]
    fn drift_counts_name_the_maps_that_differ() {
        let l = lowered(ZONES);
        let expected = Contents::of(&l, 0, 64);
        let mut read = expected.without_zeros();
        assert!(
            Delta::between(&expected.without_zeros(), &read)
                .counts()
                .is_empty()
        );
        // A port entry written behind the daemon's back, and a source entry removed.
        read.ports.insert(7, 1);
        let key = *read.hash_v4.keys().next().expect("a hashed source");
        read.hash_v4.remove(&key);
        assert_eq!(
            Delta::between(&expected.without_zeros(), &read).counts(),
            [
                (guard_common::maps::PORTS, 1),
                (guard_common::maps::SRC_HASH_V4, 1)
            ]
        );
        // Zero array values read back as absent.
        let mut zeroed = expected.clone();
        zeroed.ports.insert(9, 0);
        assert_eq!(zeroed.without_zeros(), expected.without_zeros());
    }

    #[test]
    fn applying_a_delta_yields_the_new_contents() {
        let before = lowered(ZONES);
        let text = ZONES
            .replace("\"198.18.1.0/24\", ", "")
            .replace("mode = \"enforce\"", "mode = \"audit\"");
        let after = lowered_after(&before, &text);
        let (old, new) = (Contents::of(&before, 1, 64), Contents::of(&after, 1, 64));
        let delta = Delta::between(&old, &new);
        let model = replay(&old, delta);
        assert_eq!(model, new);
    }

    /// The maps `old` describes after the writes of `delta`, as the kernel would hold them.
    fn replay(old: &Contents, delta: Delta) -> Contents {
        let mut model = old.clone();
        if let Some(config) = delta.config {
            model.config = config;
        }
        let array = |map: &mut BTreeMap<u32, u32>, changes: Vec<(u32, u32)>| {
            for (i, v) in changes {
                if v == 0 {
                    map.remove(&i);
                } else {
                    map.insert(i, v);
                }
            }
        };
        array(&mut model.ports, delta.ports);
        array(&mut model.protos, delta.protos);
        array(&mut model.port_slots, delta.port_slots);
        for (i, v) in delta.src_zones {
            if v == 0 {
                model.src_zones.remove(&i);
            } else {
                model.src_zones.insert(i, v);
            }
        }
        for (i, v) in delta.listen {
            if v == 0 {
                model.listen.remove(&i);
            } else {
                model.listen.insert(i);
            }
        }
        for (i, v) in delta.class_lens {
            if v == ClassLens::default() {
                model.class_lens.remove(&i);
            } else {
                model.class_lens.insert(i, v);
            }
        }
        fn keyed<K: Eq + std::hash::Hash>(map: &mut HashMap<K, RuleRef>, changes: Changes<K>) {
            for k in changes.delete {
                map.remove(&k);
            }
            map.extend(changes.insert);
        }
        keyed(&mut model.hash_v4, delta.hash_v4);
        keyed(&mut model.hash_v6, delta.hash_v6);
        keyed(&mut model.trie_v4, delta.trie_v4);
        keyed(&mut model.trie_v6, delta.trie_v6);
        fn set<V: Copy + Default + PartialEq>(map: &mut BTreeMap<u32, V>, changes: Vec<(u32, V)>) {
            for (i, v) in changes {
                if v == V::default() {
                    map.remove(&i);
                } else {
                    map.insert(i, v);
                }
            }
        }
        set(&mut model.direct16, delta.direct16);
        set(&mut model.direct24, delta.direct24);
        set(&mut model.direct_rules, delta.direct_rules);
        set(&mut model.table_v6, delta.table_v6);
        model
    }

    /// A port whose sources use more prefix lengths than the hash lookups take (9 for IPv4
    /// and IPv6): its class lives in the LPM tries.
    fn trie_policy(extra_v4: &str) -> String {
        let v4: Vec<String> = (16..=24)
            .map(|len| format!("\"10.{len}.0.0/{len}\""))
            .collect();
        let v6: Vec<String> = (40..=48)
            .map(|len| format!("\"2001:db8:{len:x}00::/{len}\""))
            .collect();
        format!(
            "interfaces = [\"lo\"]\nfailsafe_ports = []\n[[ingress]]\nname = \"many\"\nproto = \"tcp\"\nports = [8443]\nfrom = [{}, {}{extra_v4}]\n",
            v4.join(", "),
            v6.join(", ")
        )
    }

    #[test]
    fn a_delta_through_the_lpm_tries_yields_the_new_contents() {
        let before = lowered(&trie_policy(""));
        let old = Contents::of(&before, 1, 64);
        assert!(
            !old.trie_v4.is_empty() && !old.trie_v6.is_empty(),
            "the class is in the tries"
        );
        // One more IPv4 prefix, and one IPv6 prefix gone.
        let text = trie_policy(", \"192.0.2.0/28\"").replace("\"2001:db8:3000::/48\", ", "");
        let after = lowered_after(&before, &text);
        let new = Contents::of(&after, 1, 64);
        let delta = Delta::between(&old, &new);
        assert!(
            !delta.trie_v4.insert.is_empty() && !delta.trie_v6.delete.is_empty(),
            "the change goes through the tries: {delta:?}"
        );
        assert!(
            delta.writes() < Delta::between(&Contents::default(), &new).writes(),
            "only what changed is written"
        );
        assert_eq!(replay(&old, delta), new);
    }

    /// What the kernel's `Policy::table_v6` reads: both buckets of the key, every slot.
    fn table_answer(
        table: &BTreeMap<u32, SrcBucketV6>,
        generation: u32,
        bits: u32,
        key: &SrcHashKeyV6,
    ) -> Option<RuleRef> {
        let (hi, lo) = halves(&key.addr);
        let (a, b) = table_v6_buckets(key.class, key.prefix_len, hi, lo, bits);
        [a, b].into_iter().find_map(|bucket| {
            table
                .get(&((generation << bits) | bucket))?
                .0
                .iter()
                .find(|s| {
                    s.class == key.class
                        && s.prefix_len == key.prefix_len
                        && (s.hi, s.lo) == (hi, lo)
                })
                .map(|s| s.rule)
        })
    }

    proptest::proptest! {
        #[test]
        fn the_ipv6_table_answers_as_the_hash_map(
            raw in proptest::collection::vec((1u32..40, 0u32..=128, proptest::prelude::any::<u128>(), 1u32..9), 1..3000),
            probes in proptest::collection::vec((1u32..40, 0u32..=128, proptest::prelude::any::<u128>()), 100),
            generation in 0u32..2,
        ) {
            let bits = 10;
            let entries: HashMap<SrcHashKeyV6, RuleRef> = raw
                .iter()
                .map(|&(class, prefix_len, addr, rule)| {
                    (
                        SrcHashKeyV6 { class, prefix_len, addr: addr.to_be_bytes() },
                        RuleRef { rule, action: 1 + rule % 3 },
                    )
                })
                .collect();
            let table = table_v6(&entries, generation, bits).expect("fits at under half full");
            for (key, rule) in &entries {
                proptest::prop_assert_eq!(table_answer(&table, generation, bits, key), Some(*rule));
            }
            for &(class, prefix_len, addr) in &probes {
                let key = SrcHashKeyV6 { class, prefix_len, addr: addr.to_be_bytes() };
                proptest::prop_assert_eq!(table_answer(&table, generation, bits, &key), entries.get(&key).copied());
            }
            for &index in table.keys() {
                proptest::prop_assert_eq!(index >> bits, generation, "the generation's own buckets");
            }
        }
    }

    #[test]
    fn an_ipv6_table_too_full_is_not_made() {
        let entries: HashMap<SrcHashKeyV6, RuleRef> = (0..4000u32)
            .map(|i| {
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&i.to_be_bytes());
                (
                    SrcHashKeyV6 {
                        class: 1,
                        prefix_len: 32,
                        addr,
                    },
                    RuleRef { rule: 1, action: 1 },
                )
            })
            .collect();
        // 4 000 entries in 2^10 buckets of 4 slots: over 90 % full.
        assert!(table_v6(&entries, 0, 10).is_none());
        assert!(table_v6(&entries, 0, 11).is_some());
        let l = lowered(ZONES);
        let c = Contents::of(&l, 1, 64).with_table_v6(1, 10);
        assert_eq!(c.config.table_v6_bits, 10);
        assert!(!c.table_v6.is_empty(), "the IPv6 zones are in the table");
        let none = Contents::of(&l, 1, 64).with_table_v6(1, 0);
        assert_eq!(none.config.table_v6_bits, 0);
        assert!(none.table_v6.is_empty());
    }
}
