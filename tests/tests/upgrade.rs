//! Upgrading guard in place when a map's layout changed (here `GUARD_COUNTERS`, which grew
//! from 16 to 32 reason slots per port when the route check's reasons were added).
//!
//! The lab is attached, an attack is counted, and then the bridge's pins are put back into the
//! shape an older guard left: `GUARD_COUNTERS` with 16 reason slots (holding a count the old
//! guard made) and a state naming another object. Then:
//! - readers (`guardctl stats`) refuse the old layout, naming the map, instead of misreading it;
//! - `guardctl attach` replaces the map (a new map, the new programs swapped onto the existing
//!   hooks, the new map renamed over the old pin), carries the old counts over, and leaves no
//!   staging pin; the attack is still dropped and counted on top of the carried count.
//!
//! Before this, attach reused any pinned map by name: the new programs indexed the 16-slot map
//! with 32 slots per port and counted into other ports' and reasons' cells.
//!
//! Needs root and `guardctl` built in the same profile.

use std::{path::Path, process::Command};

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use guard_common::{Counter, MAX_PORT_SLOTS, REASON_SLOTS, map_names, reason};
use guard_tests::lab::{
    Lab, Role, Variant, addr,
    attack::{self, Attacker, FireOptions},
    guardctl::{PinScope, RUN_ROOT},
    harness::{assert_no_namespaces_left, require_root_and_guardctl, serial},
};

/// The reason slots per port of the layout before this version.
const OLD_REASON_SLOTS: u32 = 16;

fn bpftool_max_entries(pin: &Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin)
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool map show {}", pin.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v["max_entries"].as_u64().expect("max_entries")
}

/// Puts the pins back into the shape an older guard left: a 16-slot counter map with 7 drops
/// of `slot` counted as `deny_ipv4`, and a state naming another object (so attach loads this
/// build's programs).
fn plant_old_layout(dir: &Path, host: &str, slot: u32) {
    let counters_pin = dir.join(map_names::COUNTERS);
    let old_pin = dir.join("old_counters");
    let made = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&old_pin)
        .args(["type", "percpu_array", "key", "4", "value", "16", "entries"])
        .arg((MAX_PORT_SLOTS * OLD_REASON_SLOTS).to_string())
        .args(["name", map_names::COUNTERS])
        .status()
        .expect("run bpftool");
    assert!(made.success(), "bpftool map create");
    {
        let data = MapData::from_pin(&old_pin).expect("open the old-layout map");
        let mut old: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(Map::PerCpuArray(data)).expect("per-cpu array");
        let cpus = aya::util::nr_cpus().expect("cpus");
        let mut values = vec![Counter::default(); cpus];
        values[0] = Counter {
            packets: 7,
            bytes: 700,
        };
        old.set(
            slot * OLD_REASON_SLOTS + reason::DENY_IPV4,
            PerCpuValues::try_from(values).expect("values"),
            0,
        )
        .expect("write the old count");
    }
    std::fs::rename(&old_pin, &counters_pin).expect("put the old map under its name");
    let state_path = Path::new(RUN_ROOT)
        .join(host)
        .join(addr::BRIDGE)
        .join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).expect("state")).expect("state json");
    state["object_id"] = "an-older-build".into();
    std::fs::write(&state_path, serde_json::to_vec(&state).expect("json")).expect("write state");
}

#[test]
fn attach_upgrades_a_map_whose_layout_changed() {
    let _serial = serial();
    let gctl = require_root_and_guardctl("the upgrade test needs root; not skipping");
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let attacker = Attacker::g1(&lab).expect("attacker");
    let port = lab.port(Role::G1).expect("g1").host.name.clone();
    let cases: Vec<_> = attack::attack_cases()
        .into_iter()
        .filter(|c| c.name == "fwd-v4-storage")
        .collect();
    let opts = FireOptions::default();
    let n = u64::from(opts.count);

    gctl.ok(Some(&host), &["attach", addr::BRIDGE])
        .expect("attach");
    let status = gctl.status(&host, addr::BRIDGE).expect("status");
    let slot = status["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|e| e["name"] == port.as_str()))
        .and_then(|e| e["slot"].as_u64())
        .expect("g1's slot") as u32;

    let dir = guard_tests::lab::guardctl::pin_scope_dir(Some(&host)).join(addr::BRIDGE);
    let counters_pin = dir.join(map_names::COUNTERS);
    plant_old_layout(&dir, &host, slot);
    assert_eq!(
        bpftool_max_entries(&counters_pin),
        u64::from(MAX_PORT_SLOTS * OLD_REASON_SLOTS)
    );

    // Readers refuse the old layout rather than misread it.
    let out = gctl
        .output(Some(&host), &["stats", addr::BRIDGE, "--json"])
        .expect("run stats");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(map_names::COUNTERS) && err.contains("attach"),
        "stats on the old layout: {}\n{err}",
        out.status
    );

    // The upgrade.
    gctl.ok(Some(&host), &["attach", addr::BRIDGE])
        .expect("attach over the old layout");
    assert_eq!(
        bpftool_max_entries(&counters_pin),
        u64::from(MAX_PORT_SLOTS * REASON_SLOTS),
        "attach left the old counter map in place"
    );
    let staging: Vec<_> = std::fs::read_dir(&dir)
        .expect("pin dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with("_new"))
        .map(|e| e.path())
        .collect();
    assert!(staging.is_empty(), "staging pins left: {staging:?}");
    let carried = gctl.stats(&host, addr::BRIDGE).expect("stats");
    assert_eq!(
        carried.port_reason(&port, "deny_ipv4"),
        7,
        "the old count was not carried over"
    );

    // Still enforced, and counted on top of the carried count.
    let with = attack::fire(&lab, &attacker, &cases, opts).expect("fire after the upgrade");
    assert_eq!(
        with[0].delivered, 0,
        "leaked after the upgrade: {}",
        with[0]
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let counted = loop {
        let now = gctl
            .stats(&host, addr::BRIDGE)
            .expect("stats")
            .port_reason(&port, "deny_ipv4");
        if now >= 7 + n || std::time::Instant::now() >= deadline {
            break now;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    assert_eq!(counted, 7 + n);

    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    drop(pins);
    lab.teardown().expect("teardown");
    assert_no_namespaces_left();
}
