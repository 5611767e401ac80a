//! The direct source tables for IPv4 (`guard_common::maps::SRC_DIRECT16`, `SRC_DIRECT24`,
//! `SRC_DIRECT_RULES`): the answer of every class's source lookup, per region of the
//! address space, so the kernel reads arrays instead of hashing the source once per prefix
//! length.
//!
//! A *region* is a /16, or a /24 of a /16 that holds prefixes longer than 16 bits. Its
//! *signature* is the set of the policy's source prefixes that hold all of it; two regions
//! with one signature get the same answer from every class, so they share a *row*: for each
//! class, the rule of the most specific prefix of the signature that the class has. A /24
//! holding a prefix longer than 24 bits is left to the hash lookups ([`DIRECT_LOOKUP`]), as
//! are regions past the tables' capacity: the tables make a verdict cheaper, never
//! different.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use guard_common::{
    DIRECT_BLOCK, DIRECT_BLOCKS, DIRECT_LOOKUP, DIRECT_NONE, DIRECT_ROW, DIRECT_RULES_LEN,
    DirectBlock, RuleRef,
};

/// The direct tables of one policy, class ids as lowered (no generation offset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectV4 {
    /// Non-[`DIRECT_NONE`] entries of the first level: (first 16 bits, value).
    pub first: Vec<(u32, u32)>,
    /// The second level's blocks, by index.
    pub blocks: Vec<DirectBlock>,
    /// Non-empty row entries: (entry index, rule).
    pub rules: Vec<(u32, RuleRef)>,
    /// Entries per row, at least the highest class id + 1 (0 when there are no rows).
    pub width: u32,
}

/// How one lowering laid out its rows, for the next to keep: a policy change then rewrites
/// the rows it changes, not every row after them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectRows {
    pub width: u32,
    /// Row number by signature (each prefix of it as (address, length), sorted).
    pub rows: HashMap<Vec<(u32, u32)>, u32>,
}

/// One source prefix of the policy and the rule each class gives it.
struct Prefix {
    addr: u32,
    len: u32,
    members: Vec<(u32, RuleRef)>,
}

/// A region's entry before rows are numbered.
#[derive(Clone, Copy)]
enum Cell {
    None,
    Lookup,
    /// A signature, by its index.
    Sig(usize),
}

/// A /16: one cell for all of it, or one per /24.
enum Region {
    Whole(Cell),
    Split(Box<[Cell; 256]>),
}

/// Builds the tables from every IPv4 source entry of the policy, each as (class, prefix
/// length, masked address, rule); `classes` is the highest class id. Rows of `previous`
/// keep their numbers where their signature and the row width stay.
pub fn direct_v4(
    entries: impl IntoIterator<Item = (u32, u32, u32, RuleRef)>,
    classes: u32,
    previous: &DirectRows,
) -> (DirectV4, DirectRows) {
    let mut ids: HashMap<(u32, u32), usize> = HashMap::new();
    let mut prefixes: Vec<Prefix> = Vec::new();
    for (class, len, addr, rule) in entries {
        let id = *ids.entry((addr, len)).or_insert_with(|| {
            prefixes.push(Prefix {
                addr,
                len,
                members: Vec::new(),
            });
            prefixes.len() - 1
        });
        prefixes[id].members.push((class, rule));
    }
    if prefixes.is_empty() {
        return Default::default();
    }
    // The row width: what the classes need with some headroom, or the previous width while
    // it is enough and not much more (a policy that grows a class at a time keeps its rows).
    let needed = classes + 1;
    let width = if previous.width >= needed && previous.width <= 2 * needed + 16 {
        previous.width
    } else {
        needed.saturating_add((needed / 4).max(8))
    };

    // Prefixes of at most 16 bits, by the /16s they cover; longer ones by their /16.
    let mut short: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut mid: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut long: BTreeSet<u32> = BTreeSet::new();
    for (id, p) in prefixes.iter().enumerate() {
        if p.len <= 16 {
            let span = 1u32 << (16 - p.len);
            let first = (p.addr >> 16) & !(span - 1);
            for b in first..first + span {
                short.entry(b).or_default().push(id);
            }
        } else {
            let list = mid.entry(p.addr >> 16).or_default();
            if p.len <= 24 {
                list.push(id);
            } else {
                long.insert(p.addr >> 8);
            }
        }
    }

    // Every region's signature.
    let mut sigs: Vec<Vec<usize>> = Vec::new();
    let mut sig_ids: HashMap<Vec<usize>, usize> = HashMap::new();
    let mut cell = |sig: Vec<usize>| {
        if sig.is_empty() {
            return Cell::None;
        }
        let next = sigs.len();
        let id = *sig_ids.entry(sig.clone()).or_insert(next);
        if id == next {
            sigs.push(sig);
        }
        Cell::Sig(id)
    };
    let mut first_cells: Vec<(u32, Region)> = Vec::new();
    let mut blocks = 0u32;
    let regions: BTreeSet<u32> = short.keys().chain(mid.keys()).copied().collect();
    for b in regions {
        let above: &[usize] = short.get(&b).map_or(&[], Vec::as_slice);
        let entry = match mid.get(&b) {
            None => Region::Whole(cell(above.to_vec())),
            Some(_) if blocks >= DIRECT_BLOCKS => Region::Whole(Cell::Lookup),
            Some(inside) => {
                let mut per_24: Vec<Vec<usize>> = vec![Vec::new(); 256];
                for &id in inside {
                    let p = &prefixes[id];
                    let span = 1u32 << (24 - p.len);
                    let first = ((p.addr >> 8) & 0xff) & !(span - 1);
                    for k in first..first + span {
                        per_24[k as usize].push(id);
                    }
                }
                let mut cells = Box::new([Cell::None; 256]);
                for (k, ids) in per_24.into_iter().enumerate() {
                    cells[k] = if long.contains(&((b << 8) | k as u32)) {
                        Cell::Lookup
                    } else {
                        let mut sig: Vec<usize> = above.iter().copied().chain(ids).collect();
                        sig.sort_unstable();
                        cell(sig)
                    };
                }
                blocks += 1;
                Region::Split(cells)
            }
        };
        first_cells.push((b, entry));
    }

    // Row numbers: kept from `previous` where the signature and width stay, the lowest
    // free ones for the rest, none past the capacity (those regions are looked up).
    let max_rows = DIRECT_RULES_LEN / width.max(1);
    let keys: Vec<Vec<(u32, u32)>> = sigs
        .iter()
        .map(|sig| {
            let mut key: Vec<(u32, u32)> = sig
                .iter()
                .map(|&id| (prefixes[id].addr, prefixes[id].len))
                .collect();
            key.sort_unstable();
            key
        })
        .collect();
    let mut row_of: Vec<Option<u32>> = vec![None; sigs.len()];
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    if previous.width == width {
        for (i, key) in keys.iter().enumerate() {
            if let Some(&row) = previous.rows.get(key)
                && row < max_rows
                && taken.insert(row)
            {
                row_of[i] = Some(row);
            }
        }
    }
    let mut free = (0..max_rows).filter(|r| !taken.contains(r));
    for row in row_of.iter_mut().filter(|r| r.is_none()) {
        match free.next() {
            Some(r) => *row = Some(r),
            None => break,
        }
    }

    let mut out = DirectV4 {
        width,
        ..DirectV4::default()
    };
    let mut rows = DirectRows {
        width,
        rows: HashMap::new(),
    };
    for (i, sig) in sigs.iter().enumerate() {
        let Some(row) = row_of[i] else { continue };
        let start = row * width;
        let mut by_len = sig.clone();
        by_len.sort_by_key(|&id| std::cmp::Reverse(prefixes[id].len));
        let mut taken = BTreeSet::new();
        for id in by_len {
            for &(class, rule) in &prefixes[id].members {
                if class < width && taken.insert(class) {
                    out.rules.push((start + class, rule));
                }
            }
        }
        rows.rows.insert(keys[i].clone(), row);
    }
    out.rules.sort_unstable_by_key(|&(i, _)| i);
    let value = |c: Cell| match c {
        Cell::None => DIRECT_NONE,
        Cell::Lookup => DIRECT_LOOKUP,
        Cell::Sig(i) => row_of[i].map_or(DIRECT_LOOKUP, |row| DIRECT_ROW | (row * width)),
    };
    for (b, entry) in first_cells {
        let v = match entry {
            Region::Whole(c) => value(c),
            Region::Split(cells) => {
                out.blocks.push(DirectBlock((*cells).map(&value)));
                DIRECT_BLOCK | (out.blocks.len() as u32 - 1)
            }
        };
        out.first.push((b, v));
    }
    if rows.rows.is_empty() {
        out.width = 0;
    }
    (out, rows)
}

/// What the kernel's direct lookup answers for (class, addr), given the tables as lowered:
/// `Some(Some(rule))` a rule, `Some(None)` no rule of the class holds `addr`, `None` "look
/// it up". The reference for the tests (the kernel's `Policy::direct_v4` does the same
/// reads).
#[cfg(test)]
pub fn answer(direct: &DirectV4, class: u32, addr: u32) -> Option<Option<RuleRef>> {
    use guard_common::DIRECT_INDEX_MASK;
    let first = direct
        .first
        .iter()
        .find(|&&(b, _)| b == addr >> 16)
        .map_or(DIRECT_NONE, |&(_, v)| v);
    let value = if first & DIRECT_BLOCK != 0 {
        direct.blocks[(first & DIRECT_INDEX_MASK) as usize].0[((addr >> 8) & 0xff) as usize]
    } else {
        first
    };
    if value == DIRECT_NONE {
        return Some(None);
    }
    if value & DIRECT_ROW == 0 || class >= direct.width {
        return None;
    }
    let index = (value & DIRECT_INDEX_MASK) + class;
    Some(
        direct
            .rules
            .iter()
            .find(|&&(i, _)| i == index)
            .map(|&(_, r)| r),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mask(addr: u32, len: u32) -> u32 {
        if len == 0 {
            0
        } else {
            addr & (u32::MAX << (32 - len))
        }
    }

    /// The exact answer: the class's entry with the longest prefix holding `addr`.
    fn exact(entries: &[(u32, u32, u32, RuleRef)], class: u32, addr: u32) -> Option<RuleRef> {
        entries
            .iter()
            .filter(|&&(c, len, a, _)| c == class && mask(addr, len) == a)
            .max_by_key(|&&(_, len, _, _)| len)
            .map(|&(_, _, _, r)| r)
    }

    fn rule(n: u32) -> RuleRef {
        RuleRef {
            rule: n,
            action: 1 + n % 3,
        }
    }

    #[test]
    fn rows_hold_the_most_specific_rule_of_each_class() {
        let entries = vec![
            (1, 8, 0x0a00_0000, rule(10)),  // 10.0.0.0/8
            (1, 24, 0x0a01_0200, rule(11)), // 10.1.2.0/24
            (2, 16, 0x0a01_0000, rule(20)), // 10.1.0.0/16
            (2, 32, 0x0a01_0305, rule(21)), // 10.1.3.5/32: its /24 is left to the lookups
        ];
        let (d, _) = direct_v4(entries.clone(), 2, &DirectRows::default());
        assert!(d.width >= 3);
        assert_eq!(answer(&d, 1, 0x0a01_0207), Some(Some(rule(11))));
        assert_eq!(answer(&d, 2, 0x0a01_0207), Some(Some(rule(20))));
        assert_eq!(answer(&d, 1, 0x0a02_0000), Some(Some(rule(10))));
        assert_eq!(answer(&d, 2, 0x0a02_0000), Some(None));
        assert_eq!(answer(&d, 1, 0x0a01_0309), None);
        assert_eq!(answer(&d, 1, 0x0b00_0001), Some(None));
        // 10.1/16 is a block; the other 255 /16s of 10/8 share one row.
        assert_eq!(d.blocks.len(), 1);
        assert_eq!(d.first.len(), 256);
    }

    #[test]
    fn rows_keep_their_numbers_across_a_change() {
        let before = vec![(1, 24, 0x0a00_0500, rule(1)), (2, 24, 0x0a00_0900, rule(2))];
        let (d1, rows) = direct_v4(before.clone(), 2, &DirectRows::default());
        // A region that sorts before both, and one more class.
        let mut after = before.clone();
        after.push((3, 24, 0x0a00_0100, rule(3)));
        let (d2, _) = direct_v4(after, 3, &rows);
        assert_eq!(d2.width, d1.width, "the width has room for one more class");
        for entry in &d1.rules {
            assert!(d2.rules.contains(entry), "{entry:?} moved");
        }
        assert_eq!(d2.rules.len(), d1.rules.len() + 1);
    }

    #[test]
    fn no_sources_no_tables() {
        assert_eq!(
            direct_v4(Vec::new(), 5, &DirectRows::default()),
            Default::default()
        );
    }

    #[test]
    fn past_capacity_regions_are_looked_up() {
        // One class per row entry: 1 + 2^18 classes cannot fit one row.
        let classes = DIRECT_RULES_LEN;
        let (d, _) = direct_v4(
            vec![(classes, 24, 0x0a00_0100, rule(1))],
            classes,
            &DirectRows::default(),
        );
        assert_eq!(d.width, 0);
        assert_eq!(answer(&d, classes, 0x0a00_0101), None);
        assert_eq!(answer(&d, classes, 0x0a00_0201), Some(None));
    }

    proptest! {
        #[test]
        fn tables_agree_with_the_longest_prefix(
            raw in prop::collection::vec((1u32..6, 0u32..=32, any::<u32>(), 1u32..50), 1..40),
            probes in prop::collection::vec(any::<u32>(), 64),
        ) {
            // Addresses drawn near each other, so that prefixes nest and overlap.
            let near = |a: u32| 0x0a00_0000 | (a & 0x0003_ffff);
            let mut seen = std::collections::HashSet::new();
            let entries: Vec<_> = raw
                .iter()
                .map(|&(c, len, a, r)| (c, len, mask(near(a), len), rule(r)))
                .filter(|&(c, len, a, _)| seen.insert((c, len, a)))
                .collect();
            let (d, _) = direct_v4(entries.clone(), 5, &DirectRows::default());
            let from_entries = entries.iter().map(|&(_, _, a, _)| a);
            for addr in probes.iter().map(|&a| near(a)).chain(from_entries) {
                for class in 1..6 {
                    if let Some(found) = answer(&d, class, addr) {
                        prop_assert_eq!(found, exact(&entries, class, addr), "class {} addr {:#x}", class, addr);
                    }
                }
            }
        }
    }
}
