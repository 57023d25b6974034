//! Map layouts across guard versions: which pinned maps a new eBPF object can reuse, and the
//! window-free replacement of those it cannot.
//!
//! aya reuses a pinned map by name without comparing its definition with the object's, so a
//! new object whose map grew (`GUARD_COUNTERS` when reason codes were added) would run against
//! the old map and count into the wrong cells. [`plan`] compares every pinned map's key size,
//! value size and capacity with the object's definition. A map that no longer fits is created
//! anew beside the old one (`<name>_new`: bpffs refuses names with a dot); the old programs
//! keep using the old map until the new programs replace them on the hooks
//! (`BPF_LINK_UPDATE`, atomic); then [`promote`] copies what outlives a layout (counters) and
//! renames the new pin over the old (bpffs renames atomically), so `guardctl stats` and the
//! next attach find the new map under the old name.

use std::{collections::BTreeMap, fs, io, path::PathBuf};

use aya::maps::{MapData, MapInfo, PerCpuArray, PerCpuValues};
use guard_common::{Counter, MAX_PORT_SLOTS, REASON_SLOTS, counter_index, map_names};

use crate::{
    error::{GuardError, Result},
    pins::Location,
};

/// A map's shape, as the object defines it or the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Where each map of the new object comes from.
#[derive(Debug, Default)]
pub struct Plan {
    /// Maps pinned with a shape that differs from the object's: name -> the old shape.
    pub replaced: BTreeMap<&'static str, Shape>,
}

impl Plan {
    /// The pin path the loader gives `name`: the map's own, or the staging pin of a map that
    /// is being replaced.
    #[must_use]
    pub fn pin_path(&self, loc: &Location, name: &str) -> PathBuf {
        if self.replaced.contains_key(name) {
            staging_pin(loc, name)
        } else {
            loc.map_pin(name)
        }
    }
}

fn staging_pin(loc: &Location, name: &str) -> PathBuf {
    loc.map_pin(&format!("{name}_new"))
}

/// The shapes of the maps `object` defines.
pub fn object_shapes(object: &[u8]) -> Result<BTreeMap<String, Shape>> {
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| GuardError::Policy(format!("parsing the eBPF object: {e}")))?;
    Ok(obj
        .maps
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                Shape {
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                },
            )
        })
        .collect())
}

fn pinned_shape(info: &MapInfo) -> Shape {
    Shape {
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }
}

/// Compares every map pinned for `loc` with `object`'s definition, after removing the staging
/// pins an interrupted earlier upgrade left (the loader would otherwise reuse them
/// half-filled).
pub fn plan(loc: &Location, object: &[u8]) -> Result<Plan> {
    for name in map_names::ALL {
        remove_pin(&staging_pin(loc, name))?;
    }
    compare(loc, object)
}

fn compare(loc: &Location, object: &[u8]) -> Result<Plan> {
    let shapes = object_shapes(object)?;
    let mut plan = Plan::default();
    for name in map_names::ALL {
        let path = loc.map_pin(name);
        if !path.exists() {
            // A map this build added: the loader creates and pins it.
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| GuardError::map(name, e))?;
        let old = pinned_shape(&info);
        if let Some(new) = shapes.get(name)
            && old != *new
        {
            log::info!("map {name}: pinned {old:?}, this build needs {new:?}: replacing it");
            plan.replaced.insert(name, old);
        }
    }
    Ok(plan)
}

/// After the new programs run on every hook: carries the counters over, then puts every
/// replaced map under its own name.
pub fn promote(loc: &Location, plan: &Plan) -> Result<()> {
    for (&name, old) in &plan.replaced {
        if name == map_names::COUNTERS {
            copy_counters(loc, *old)?;
        }
        let from = staging_pin(loc, name);
        let to = loc.map_pin(name);
        fs::rename(&from, &to).map_err(|source| GuardError::Bpffs { path: to, source })?;
    }
    Ok(())
}

/// Drops the staging pins of a replacement that did not complete (the old maps stay in use).
pub fn abandon(loc: &Location, plan: &Plan) {
    for name in plan.replaced.keys() {
        let _ = remove_pin(&staging_pin(loc, name));
    }
}

/// Copies every (slot, reason) counter the old layout has into the new one: the reason
/// codes are append-only, so a code means the same in both.
fn copy_counters(loc: &Location, old: Shape) -> Result<()> {
    let name = map_names::COUNTERS;
    let open = |path: PathBuf| -> Result<PerCpuArray<MapData, Counter>> {
        let data = MapData::from_pin(&path).map_err(|e| GuardError::map(name, e))?;
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(|e| GuardError::map(name, e))
    };
    let from = open(loc.map_pin(name))?;
    let mut to = open(staging_pin(loc, name))?;
    let old_reasons = old.max_entries / MAX_PORT_SLOTS;
    for slot in 0..MAX_PORT_SLOTS {
        for reason in 0..old_reasons.min(REASON_SLOTS) {
            let values = from
                .get(&(slot * old_reasons + reason), 0)
                .map_err(|e| GuardError::map(name, e))?;
            if values.iter().all(|c| c.packets == 0 && c.bytes == 0) {
                continue;
            }
            let values = PerCpuValues::try_from(values.iter().copied().collect::<Vec<_>>())
                .map_err(|e| GuardError::Policy(format!("per-cpu values: {e}")))?;
            to.set(counter_index(slot, reason), values, 0)
                .map_err(|e| GuardError::map(name, e))?;
        }
    }
    Ok(())
}

fn remove_pin(path: &std::path::Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GuardError::Bpffs {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Fails, naming the map, when a map pinned for `loc` does not have the shape `object` needs,
/// or is missing: readers (`stats`, `events`, `rules`) would misread it. `attach` (or the
/// agent) replaces it.
pub fn check(loc: &Location, object: &[u8]) -> Result<()> {
    let plan = compare(loc, object)?;
    let missing = map_names::ALL.iter().find(|n| !loc.map_pin(n).exists());
    match plan.replaced.keys().next().or(missing) {
        None => Ok(()),
        Some(name) => Err(GuardError::Policy(format!(
            "map {name} pinned for {} was made by another guard version (its layout \
             differs); run `guardctl attach {}` to upgrade it in place",
            loc.bridge, loc.bridge
        ))),
    }
}
