//! What guard keeps in bpffs: the pin directory, its layout mark, and the pins of links
//! and of the state maps every load shares.

use super::*;

/// What guard keeps in bpffs so enforcement and counters outlive the daemon:
/// `PIN_DIR/maps/<map>` (the state maps every load shares) and `PIN_DIR/links/<hook>`.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: std::path::PathBuf,
}

impl Pins {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> std::path::PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn link(&self, hook: &str) -> std::path::PathBuf {
        self.dir.join("links").join(hook)
    }

    /// Creates the directories (mounting bpffs at /sys/fs/bpf when needed).
    pub fn prepare(&self) -> std::io::Result<()> {
        crate::linux::host::prepare_pin_dir(&self.dir)?;
        std::fs::create_dir_all(self.dir.join("maps"))?;
        std::fs::create_dir_all(self.dir.join("links"))
    }

    /// The mark of this guard's pin layout ([`maps::PIN_LAYOUT`]): an empty directory, the
    /// only kind of entry bpffs holds besides pinned objects.
    fn layout_mark(layout: u32) -> String {
        format!("layout-{layout}")
    }

    /// The pin layout of what is pinned here: `None` when nothing is pinned; layout 1 when
    /// objects are pinned without a mark (a guard from before layouts were numbered).
    pub fn pinned_layout(&self) -> Option<u32> {
        let marks: Vec<u32> = std::fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("layout-")?
                    .parse::<u32>()
                    .ok()
            })
            .collect();
        // Several marks (a pin directory tampered with, or two guards' leftovers): the one
        // that is not ours, so the pins are refused rather than guessed at.
        let marked = marks
            .iter()
            .copied()
            .find(|&m| m != maps::PIN_LAYOUT)
            .or(marks.first().copied());
        let pinned =
            |sub: &str| std::fs::read_dir(self.dir.join(sub)).is_ok_and(|mut d| d.next().is_some());
        match marked {
            Some(layout) => Some(layout),
            None if pinned("maps") || pinned("links") => Some(1),
            None => None,
        }
    }

    /// Checks that what is pinned here has a layout this guard adopts
    /// ([`maps::PIN_LAYOUTS_ADOPTED`]), marking an empty pin directory as ours. Another
    /// layout is refused before anything is touched: the programs attached by the guard
    /// that made the pins keep enforcing. Pins of an older adopted layout keep their mark
    /// until this guard's programs run over them ([`Pins::mark_layout`]), so a failed
    /// start leaves them as the older guard can take them back.
    pub fn adopt_layout(&self) -> Result<(), LoadError> {
        match self.pinned_layout() {
            Some(found) if maps::PIN_LAYOUTS_ADOPTED.contains(&found) => Ok(()),
            Some(found) => Err(LoadError::PinLayout {
                dir: self.dir.display().to_string(),
                found,
            }),
            None => std::fs::create_dir_all(self.dir.join(Self::layout_mark(maps::PIN_LAYOUT)))
                .map_err(|source| LoadError::PinDir {
                    dir: self.dir.display().to_string(),
                    source,
                }),
        }
    }

    /// Marks pins of an older adopted layout as this guard's, once its programs run over
    /// them: from then on a guard of the older layout, which would not read what this one
    /// adds, refuses them. Returns the layout they had (`None`: already ours).
    pub fn mark_layout(&self) -> std::io::Result<Option<u32>> {
        let found = match self.pinned_layout() {
            Some(found) if found != maps::PIN_LAYOUT => found,
            _ => return Ok(None),
        };
        // Our mark first, then the old one goes: interrupted in between, both marks remain,
        // the old one is found again, and the next start finishes the move.
        std::fs::create_dir_all(self.dir.join(Self::layout_mark(maps::PIN_LAYOUT)))?;
        match std::fs::remove_dir(self.dir.join(Self::layout_mark(found))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(Some(found)),
        }
    }

    /// True when links are pinned: a daemon ran and its programs are still attached.
    pub fn has_links(&self) -> bool {
        std::fs::read_dir(self.dir.join("links")).is_ok_and(|mut d| d.next().is_some())
    }

    /// Unpins one hook's link; the kernel detaches it once nothing else holds it.
    pub fn remove_link(&self, hook: &str) {
        let _ = std::fs::remove_file(self.link(hook));
    }

    /// Unpins everything: the links detach, the maps are freed (`guard unload`).
    pub fn remove_all(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Pin names of the links on an interface and on the cgroup.
pub fn xdp_hook(iface: &str) -> String {
    format!("xdp-{iface}")
}

pub fn tc_hook(iface: &str) -> String {
    format!("tc-{iface}")
}

pub fn cgroup_hook(program: &str) -> String {
    format!("cgroup-{program}")
}

/// When the pinned rule-counter map holds fewer slots than `capacity` asks, unpins it and
/// returns it (its counters are carried into the new map the load creates). When it holds
/// more, `capacity` grows to its size, so the loader's idea of the map is the kernel's.
pub(super) fn outgrow_rule_counters(
    pins: &Pins,
    capacity: &mut Capacity,
) -> Result<Option<MapData>, LoadError> {
    let name = maps::RULE_STATS;
    let path = pins.map(name);
    if !path.exists() {
        return Ok(None);
    }
    let pinned = MapData::from_pin(&path).map_err(map_err(name))?;
    let slots = pinned.info().map_err(map_err(name))?.max_entries();
    if slots >= capacity.rules {
        capacity.rules = slots;
        return Ok(None);
    }
    tracing::info!(
        from = slots,
        to = capacity.rules,
        "the policy outgrows the pinned rule counters: moving them into a larger map"
    );
    std::fs::remove_file(&path).map_err(|source| LoadError::PinLink {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Some(pinned))
}

/// Pins a link (any type aya can turn into an fd link) at `path`.
pub(super) fn pin_link<L>(link: L, path: &Path) -> Result<(), LoadError>
where
    aya::programs::links::FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let err = |e: &dyn std::fmt::Display| LoadError::PinLink {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    };
    let fd_link = aya::programs::links::FdLink::try_from(link).map_err(|e| err(&e))?;
    fd_link.pin(path).map_err(|e| err(&e))?;
    Ok(())
}
