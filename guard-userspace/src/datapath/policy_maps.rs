//! The policy maps of a loaded instance: two generations, written as deltas and flipped
//! with one write (with a kernel-held commit-confirm deadline), read back to check drift;
//! and the typed map I/O they use.

use super::*;

impl Guard {
    /// True when `lowered` can replace the running policy in this instance's maps
    /// ([`Guard::switch`]); otherwise it needs a new instance ([`Guard::load`]).
    pub fn fits(&self, lowered: &Lowered) -> bool {
        let Some(active) = &self.generations[self.active as usize] else {
            return false;
        };
        if self.generations[1 - self.active as usize].is_none() {
            return false;
        }
        let cap = &self.capacity;
        let needed = [
            lowered.src_hash_v4.len(),
            lowered.src_hash_v6.len(),
            lowered.src_v4.len(),
            lowered.src_v6.len(),
        ];
        let rules_needed = lowered.rules.iter().map(|r| r.index + 1).max().unwrap_or(0);
        rules_needed <= cap.rules
            && lowered.classes < cap.classes_per_generation
            && active
                .source_entries()
                .iter()
                .zip(needed)
                .zip(cap.sources)
                .all(|((&running, new), room)| (running + new) as u32 <= room)
    }

    /// Makes `lowered` the running policy without reloading anything: writes the entries
    /// that differ into the inactive generation of the policy maps, zeroes the counters of
    /// new rules and ports, then flips the active generation (one map write: each program
    /// run sees the old policy or the new one, never a mix). Returns the number of map
    /// writes. Call only when [`Guard::fits`]; on an error the running policy stays.
    ///
    /// With `deadline_ns` (CLOCK_MONOTONIC_COARSE, see [`monotonic_ns`]) the switch is
    /// provisional: unless [`Guard::confirm`] comes first, the programs themselves go back
    /// to the previous generation at the deadline, whether or not a daemon is running.
    pub fn switch(
        &mut self,
        lowered: &Lowered,
        deadline_ns: Option<u64>,
    ) -> Result<usize, LoadError> {
        let target = 1 - self.active;
        let contents = self.capacity.contents(lowered, target);
        let old = self.generations[target as usize]
            .take()
            .expect("Guard::fits checked both generations");
        let delta = Delta::between(&old, &contents);
        // From here until the write succeeds the target generation's contents are unknown
        // (`None`): a failure leaves the active generation running and forces a new
        // instance next time.
        write_delta(&mut self.ebpf, target, &delta)?;
        self.generations[target as usize] = Some(contents);
        self.zero_fresh(lowered)?;
        let active = ActiveGeneration {
            generation: target,
            fallback: self.active,
            deadline_ns: deadline_ns.unwrap_or(0),
        };
        set_array(&mut self.ebpf, maps::ACTIVE, &[(0, active)])?;
        self.active = target;
        Ok(delta.writes() + 1)
    }

    /// Makes the running generation final: a provisional [`Guard::switch`]'s deadline is
    /// cleared.
    pub fn confirm(&mut self) -> Result<(), LoadError> {
        self.set_active(self.active)
    }

    /// Undoes the [`Guard::switch`] just made: the programs judge by the previous generation
    /// again (the switch wrote only the other one, so it is intact).
    pub fn revert(&mut self) -> Result<(), LoadError> {
        self.set_active(1 - self.active)
    }

    pub(super) fn set_active(&mut self, generation: u32) -> Result<(), LoadError> {
        let active = ActiveGeneration {
            generation,
            fallback: generation,
            deadline_ns: 0,
        };
        set_array(&mut self.ebpf, maps::ACTIVE, &[(0, active)])?;
        self.active = generation;
        Ok(())
    }

    /// The kernel's [`maps::ACTIVE`] record.
    pub fn active_record(&self) -> Result<ActiveGeneration, LoadError> {
        Array::<_, ActiveGeneration>::try_from(self.map(maps::ACTIVE)?)
            .map_err(map_err(maps::ACTIVE))?
            .get(&0, 0)
            .map_err(map_err(maps::ACTIVE))
    }

    /// Drift: what the kernel's policy maps hold for the active generation, compared with
    /// what this daemon wrote there. Each difference is described (map, entries that
    /// differ); none means the kernel judges by exactly the running policy.
    ///
    /// `recorded` is the recorded policy lowered again (the daemon lowers the policy text
    /// whose hash the state file records, with the recorded rule and port slots), so the
    /// kernel is compared with what was recorded, not with what this process remembers it
    /// wrote.
    pub fn verify(&self, recorded: &Lowered) -> Result<Vec<String>, LoadError> {
        let mut found = Vec::new();
        let record = self.active_record()?;
        let flag = record.in_force(monotonic_ns());
        if flag != self.active {
            found.push(format!(
                "{}: the programs judge by generation {flag}{}, the daemon wrote generation {}",
                maps::ACTIVE,
                if record.generation == self.active {
                    " (a commit-confirm deadline passed)"
                } else {
                    ""
                },
                self.active
            ));
        }
        let expected = self.capacity.contents(recorded, self.active);
        let read = self.read_generation(self.active)?;
        for (map, count) in Delta::between(&expected.without_zeros(), &read).counts() {
            found.push(format!(
                "{map}: {count} entr{} differ from the running policy",
                if count == 1 { "y" } else { "ies" }
            ));
        }
        Ok(found)
    }

    /// The non-zero entries generation `generation` holds in the kernel's policy maps.
    pub(super) fn read_generation(&self, generation: u32) -> Result<Contents, LoadError> {
        let classes = self.capacity.classes_per_generation;
        let own_class = |c: u32| c / classes == generation & 1;
        fn read_array<V: aya::Pod + Default + PartialEq>(
            guard: &Guard,
            generation: u32,
            name: &'static str,
            len: u32,
        ) -> Result<BTreeMap<u32, V>, LoadError> {
            let first = gen_index(generation, len, 0);
            let mut out = BTreeMap::new();
            if let Some(values) = read_batched::<V>(guard, name, first, len)? {
                for (i, v) in values.into_iter().enumerate() {
                    if v != V::default() {
                        out.insert(first + i as u32, v);
                    }
                }
                return Ok(out);
            }
            let a = Array::<_, V>::try_from(guard.map(name)?).map_err(map_err(name))?;
            for index in first..first + len {
                let v = a.get(&index, 0).map_err(map_err(name))?;
                if v != V::default() {
                    out.insert(index, v);
                }
            }
            Ok(out)
        }
        let array = |name: &'static str, len: u32| read_array::<u32>(self, generation, name, len);
        let config = Array::<_, GuardConfig>::try_from(self.map(maps::CONFIG)?)
            .map_err(map_err(maps::CONFIG))?
            .get(&generation, 0)
            .map_err(map_err(maps::CONFIG))?;
        let lens = Array::<_, ClassLens>::try_from(self.map(maps::CLASS_LENS)?)
            .map_err(map_err(maps::CLASS_LENS))?;
        let mut class_lens = BTreeMap::new();
        let first = (generation & 1) * classes;
        for c in first..first + classes {
            let v = lens.get(&c, 0).map_err(map_err(maps::CLASS_LENS))?;
            if v != ClassLens::default() {
                class_lens.insert(c, v);
            }
        }
        Ok(Contents {
            config,
            ports: array(maps::PORTS, POLICY_PORTS_LEN)?,
            protos: array(maps::PROTOS, PROTOS_LEN)?,
            listen: array(maps::LISTEN, PORTS_LEN)?.into_keys().collect(),
            port_slots: array(maps::PORT_SLOTS, PORTS_LEN)?,
            class_lens,
            hash_v4: read_hash(
                self.map(maps::SRC_HASH_V4)?,
                maps::SRC_HASH_V4,
                |k: &SrcHashKeyV4| own_class(k.class),
            )?,
            hash_v6: read_hash(
                self.map(maps::SRC_HASH_V6)?,
                maps::SRC_HASH_V6,
                |k: &SrcHashKeyV6| own_class(k.class),
            )?,
            trie_v4: read_trie(self.map(maps::SRC_V4)?, maps::SRC_V4, |k: &SrcKeyV4| {
                own_class(u32::from_be_bytes(k.class))
            })?,
            trie_v6: read_trie(self.map(maps::SRC_V6)?, maps::SRC_V6, |k: &SrcKeyV6| {
                own_class(u32::from_be_bytes(k.class))
            })?,
            src_zones: read_array::<u64>(self, generation, maps::SRC_ZONES, SRC_ZONES_LEN)?,
            direct16: array(maps::SRC_DIRECT16, DIRECT16_LEN)?,
            direct24: read_array(self, generation, maps::SRC_DIRECT24, DIRECT_BLOCKS)?,
            direct_rules: read_array(self, generation, maps::SRC_DIRECT_RULES, DIRECT_RULES_LEN)?,
            table_v6: read_array(
                self,
                generation,
                maps::SRC_TABLE_V6,
                1 << self.capacity.table_v6_bits,
            )?,
        })
    }

    /// Zeroes the counters of rule indices and port slots the policy gives to new names
    /// (they may hold a removed rule's counts).
    pub fn zero_fresh(&mut self, lowered: &Lowered) -> Result<(), LoadError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        let capacity = PerCpuArray::<_, RuleStats>::try_from(self.map(maps::RULE_STATS)?)
            .map_err(map_err(maps::RULE_STATS))?
            .len();
        if let Some(&index) = lowered.fresh_rules.iter().find(|&&i| i >= capacity) {
            return Err(LoadError::Capacity {
                map: maps::RULE_STATS,
                capacity,
                needed: index,
            });
        }
        zero_per_cpu::<RuleStats>(&mut self.ebpf, maps::RULE_STATS, &lowered.fresh_rules, cpus)?;
        zero_per_cpu::<PortStats>(&mut self.ebpf, maps::PORT_STATS, &lowered.fresh_slots, cpus)
    }
}

/// Zeroes entries `indices` of per-CPU array `name` on every CPU: in batches
/// (`BPF_MAP_UPDATE_BATCH`), entry by entry where the kernel has none.
fn zero_per_cpu<V: aya::Pod + Default>(
    ebpf: &mut Ebpf,
    name: &'static str,
    indices: &[u32],
    cpus: usize,
) -> Result<(), LoadError> {
    let fd = match ebpf.map(name).ok_or(LoadError::MissingMap(name))? {
        Map::PerCpuArray(data) => data.fd().as_fd(),
        _ => return Err(LoadError::MissingMap(name)),
    };
    let zeros = vec![V::default(); BATCH.min(indices.len()) * cpus];
    let mut all_batched = true;
    for chunk in indices.chunks(BATCH) {
        let result = sys::update_batch_per_cpu(fd, chunk, &zeros[..chunk.len() * cpus], cpus);
        if !batched(name, "bpf_map_update_batch", result)? {
            all_batched = false;
            break;
        }
    }
    if all_batched {
        return Ok(());
    }
    let mut array = PerCpuArray::<_, V>::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    for &index in indices {
        let zero =
            aya::maps::PerCpuValues::try_from(vec![V::default(); cpus]).map_err(LoadError::Cpus)?;
        array.set(index, zero, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// Performs `delta` on generation `generation` of the policy maps: deletions before
/// insertions (so a full map has room), the config last.
pub(super) fn write_delta(
    ebpf: &mut Ebpf,
    generation: u32,
    delta: &Delta,
) -> Result<(), LoadError> {
    set_array(ebpf, maps::PORTS, &delta.ports)?;
    set_array(ebpf, maps::PROTOS, &delta.protos)?;
    set_array(ebpf, maps::LISTEN, &delta.listen)?;
    set_array(ebpf, maps::PORT_SLOTS, &delta.port_slots)?;
    set_array(ebpf, maps::CLASS_LENS, &delta.class_lens)?;
    write_hash(ebpf, maps::SRC_HASH_V4, &delta.hash_v4)?;
    write_hash(ebpf, maps::SRC_HASH_V6, &delta.hash_v6)?;
    write_trie(ebpf, maps::SRC_V4, &delta.trie_v4)?;
    write_trie(ebpf, maps::SRC_V6, &delta.trie_v6)?;
    // After the sources: a bit set before its prefixes are in only sends a lookup that
    // finds nothing yet; cleared bits belong to prefixes already deleted.
    set_array(ebpf, maps::SRC_ZONES, &delta.src_zones)?;
    set_array(ebpf, maps::SRC_TABLE_V6, &delta.table_v6)?;
    set_array(ebpf, maps::SRC_DIRECT24, &delta.direct24)?;
    set_array(ebpf, maps::SRC_DIRECT_RULES, &delta.direct_rules)?;
    // Last: its values name the blocks and rows written above.
    set_array(ebpf, maps::SRC_DIRECT16, &delta.direct16)?;
    if let Some(config) = delta.config {
        set_array(ebpf, maps::CONFIG, &[(generation, config)])?;
    }
    Ok(())
}

/// Entries written per batch call (a bound on the memory one call pins in the kernel).
const BATCH: usize = 16_384;

/// The fd of map `name` (an array or a hash), for the batch calls aya has no API for.
fn batch_fd<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<BorrowedFd<'a>, LoadError> {
    match ebpf.map(name).ok_or(LoadError::MissingMap(name))? {
        Map::Array(data) | Map::HashMap(data) => Ok(data.fd().as_fd()),
        _ => Err(LoadError::MissingMap(name)),
    }
}

fn syscall_err(name: &'static str, call: &'static str) -> impl Fn(std::io::Error) -> LoadError {
    move |io_error| LoadError::Map {
        map: name,
        source: MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    }
}

/// Whether a batch call went through: `Ok(true)` done, `Ok(false)` the kernel has no batch
/// operations for this map (the caller writes entry by entry), `Err` any other failure.
fn batched(
    name: &'static str,
    call: &'static str,
    result: std::io::Result<()>,
) -> Result<bool, LoadError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if sys::batch_unsupported(&e) => Ok(false),
        Err(e) => Err(syscall_err(name, call)(e)),
    }
}

/// The values at indices `first..first + len` of array `name`, read with
/// BPF_MAP_LOOKUP_BATCH a few megabytes at a time; `Ok(None)` when the kernel has no batch
/// operations for it (the caller reads entry by entry).
fn read_batched<V: aya::Pod + Default>(
    guard: &Guard,
    name: &'static str,
    first: u32,
    len: u32,
) -> Result<Option<Vec<V>>, LoadError> {
    let fd = batch_fd(&guard.ebpf, name)?;
    let per_call = (4 << 20) / size_of::<V>().max(1);
    let mut values = vec![V::default(); len as usize];
    for (n, chunk) in values.chunks_mut(per_call.max(1)).enumerate() {
        let start = first + (n * per_call) as u32;
        if !batched(
            name,
            "bpf_map_lookup_batch",
            sys::lookup_batch_array(fd, start, chunk),
        )? {
            return Ok(None);
        }
    }
    Ok(Some(values))
}

/// Sets every (key, value) of `pairs` in map `name` with BPF_MAP_UPDATE_BATCH, [`BATCH`] at
/// a time; `Ok(false)` when the kernel has no batch operations for it.
fn update_batched<K: Copy, V: Copy>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    pairs: &[(K, V)],
) -> Result<bool, LoadError> {
    for chunk in pairs.chunks(BATCH) {
        let (keys, values): (Vec<K>, Vec<V>) = chunk.iter().copied().unzip();
        if !batched(
            name,
            "bpf_map_update_batch",
            sys::update_batch(fd, &keys, &values),
        )? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes `entries` (index, value) into array `name`: in batches of one call each (a
/// 10 000-rule policy's tens of thousands of entries in a few calls, not one call each),
/// entry by entry on a kernel without batch operations.
pub(super) fn set_array<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(u32, V)],
) -> Result<(), LoadError> {
    if entries.len() > 1 && update_batched(batch_fd(ebpf, name)?, name, entries)? {
        return Ok(());
    }
    let mut array = Array::<_, V>::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    for &(index, value) in entries {
        array.set(index, value, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// Deletes, then inserts, the changes of hash map `name`, in batches (entry by entry on a
/// kernel without batch operations).
pub(super) fn write_hash<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    changes: &Changes<K>,
) -> Result<(), LoadError> {
    let fd = batch_fd(ebpf, name)?;
    let mut done = true;
    for keys in changes.delete.chunks(BATCH) {
        done = done && batched(name, "bpf_map_delete_batch", sys::delete_batch(fd, keys))?;
    }
    if done && update_batched(fd, name, &changes.insert)? {
        return Ok(());
    }
    let mut hash =
        HashMap::<_, K, RuleRef>::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    for key in &changes.delete {
        // A batch that failed part way may have deleted it already.
        match hash.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    for (key, value) in &changes.insert {
        hash.insert(key, value, 0).map_err(map_err(name))?;
    }
    Ok(())
}

pub(super) fn write_trie<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    changes: &Changes<(u32, K)>,
) -> Result<(), LoadError> {
    let mut trie =
        LpmTrie::<_, K, RuleRef>::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    for (prefix, key) in &changes.delete {
        trie.remove(&Key::new(*prefix, *key))
            .map_err(map_err(name))?;
    }
    for ((prefix, key), value) in &changes.insert {
        trie.insert(&Key::new(*prefix, *key), *value, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

pub(super) fn read_hash<K: aya::Pod + Eq + std::hash::Hash>(
    map: &Map,
    name: &'static str,
    keep: impl Fn(&K) -> bool,
) -> Result<std::collections::HashMap<K, RuleRef>, LoadError> {
    let hash = HashMap::<_, K, RuleRef>::try_from(map).map_err(map_err(name))?;
    let mut out = std::collections::HashMap::new();
    for entry in hash.iter() {
        let (k, v) = entry.map_err(map_err(name))?;
        if keep(&k) {
            out.insert(k, v);
        }
    }
    Ok(out)
}

pub(super) fn read_trie<K: aya::Pod + Eq + std::hash::Hash>(
    map: &Map,
    name: &'static str,
    keep: impl Fn(&K) -> bool,
) -> Result<std::collections::HashMap<(u32, K), RuleRef>, LoadError> {
    let trie = LpmTrie::<_, K, RuleRef>::try_from(map).map_err(map_err(name))?;
    let mut out = std::collections::HashMap::new();
    for entry in trie.iter() {
        let (k, v) = entry.map_err(map_err(name))?;
        if keep(&k.data()) {
            out.insert((k.prefix_len(), k.data()), v);
        }
    }
    Ok(out)
}
