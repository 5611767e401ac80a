//! Reading the counter maps into a [`Counters`] snapshot, from a loaded instance or from
//! the pins a daemon left.
use super::*;

/// Counters read from maps pinned by a running (or crashed) daemon.
pub fn pinned_counters(
    pins: &Pins,
    rules: &[RuleInfo],
    slots: &[PortSlot],
) -> Result<Counters, LoadError> {
    if let Some(found) = pins
        .pinned_layout()
        .filter(|l| !maps::PIN_LAYOUTS_ADOPTED.contains(l))
    {
        return Err(LoadError::PinLayout {
            dir: pins.dir().display().to_string(),
            found,
        });
    }
    counter_maps(|name| {
        if name == maps::DENY_TALLY && !pins.map(name).exists() {
            // Pins of layout 2 (a guard of that layout still running): no tally yet.
            return Err(LoadError::MissingMap(name));
        }
        let data = MapData::from_pin(pins.map(name)).map_err(map_err(name))?;
        Map::from_map_data(data).map_err(map_err(name))
    })?
    .read(rules, slots)
    .map_err(map_err(maps::RULE_STATS))
}

/// The counter maps, each taken by name through `get` (a live `&Map` or a pinned `Map`).
pub(super) fn counter_maps<M, T>(
    mut get: impl FnMut(&'static str) -> Result<M, LoadError>,
) -> Result<CounterMaps<T>, LoadError>
where
    T: std::borrow::Borrow<MapData>,
    M: TryInto<PerCpuArray<T, RuleStats>, Error = MapError>
        + TryInto<PerCpuArray<T, u64>, Error = MapError>
        + TryInto<PerCpuArray<T, PortStats>, Error = MapError>
        + TryInto<PerCpuArray<T, DenyTally>, Error = MapError>
        + TryInto<PerCpuHashMap<T, u32, ConnStats>, Error = MapError>
        + TryInto<PerCpuHashMap<T, u32, RttHist>, Error = MapError>
        + TryInto<PerCpuHashMap<T, u32, u64>, Error = MapError>,
{
    Ok(CounterMaps {
        rules: get(maps::RULE_STATS)?
            .try_into()
            .map_err(map_err(maps::RULE_STATS))?,
        reasons: get(maps::REASONS)?
            .try_into()
            .map_err(map_err(maps::REASONS))?,
        ports: get(maps::PORT_STATS)?
            .try_into()
            .map_err(map_err(maps::PORT_STATS))?,
        events: get(maps::EVENT_STATS)?
            .try_into()
            .map_err(map_err(maps::EVENT_STATS))?,
        tally: match get(maps::DENY_TALLY) {
            Ok(map) => Some(map.try_into().map_err(map_err(maps::DENY_TALLY))?),
            // Only pins of layout 2 lack it (`pinned_counters`); a load has every map.
            Err(LoadError::MissingMap(_)) => None,
            Err(e) => return Err(e),
        },
        conns: get(maps::CONN_STATS)?
            .try_into()
            .map_err(map_err(maps::CONN_STATS))?,
        rtt: get(maps::RTT_HIST)?
            .try_into()
            .map_err(map_err(maps::RTT_HIST))?,
        bind_denied: get(maps::BIND_DENIED)?
            .try_into()
            .map_err(map_err(maps::BIND_DENIED))?,
    })
}
