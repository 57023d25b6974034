//! Port labels (name, VM, MAC) for the verbs that show events or metrics.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use guard::{
    discovery,
    identity::{self, PortLabel},
    state::State,
};

/// Labels of the ports in `state`, with each interface's MAC from netlink (in the namespace
/// guardctl runs in) and the VM from libvirt's runtime state.
pub async fn labels(state: &State) -> Result<BTreeMap<u32, PortLabel>> {
    let handle = discovery::connect().context("opening a netlink socket")?;
    let links = discovery::links(&handle)
        .await
        .context("listing interfaces")?;
    let taps = identity::libvirt_taps(&identity::libvirt_run_dir());
    Ok(identity::label_ports(
        state.ports.iter().map(|(ifindex, p)| {
            let mac = links
                .iter()
                .find(|l| l.index == *ifindex)
                .and_then(|l| l.mac.as_ref())
                .map(|m| guard_common::Mac(*m).to_string());
            (*ifindex, p.name.clone(), mac)
        }),
        &taps,
    ))
}

/// Port name -> VM, for metrics labels (no netlink needed).
pub fn vms(state: &State) -> BTreeMap<String, String> {
    let taps = identity::libvirt_taps(&identity::libvirt_run_dir());
    state
        .ports
        .values()
        .filter_map(|p| {
            taps.get(&p.name)
                .map(|n| (p.name.clone(), n.domain.clone()))
        })
        .collect()
}
