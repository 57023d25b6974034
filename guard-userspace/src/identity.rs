//! Who owns a port: the libvirt domain whose runtime state names the tap, else just the
//! interface (name and MAC).
//!
//! libvirt keeps one status file per running domain under its run directory
//! (`/run/libvirt/qemu/<name>.xml`, a `<domstatus>` around the live `<domain>`); each guest NIC
//! is an `<interface>` whose `<target dev='vnetN'/>` is the tap on the bridge and whose
//! `<mac address=.../>` is the guest's MAC. Reading these files needs no libvirt connection
//! (and no libvirt client library), works for a stopped daemon, and is read-only.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// libvirt's QEMU run directory; `GUARD_LIBVIRT_RUN_DIR` overrides it (tests, other drivers).
pub const LIBVIRT_RUN_DIR: &str = "/run/libvirt/qemu";

#[must_use]
pub fn libvirt_run_dir() -> PathBuf {
    std::env::var_os("GUARD_LIBVIRT_RUN_DIR").map_or_else(|| LIBVIRT_RUN_DIR.into(), PathBuf::from)
}

/// A guest NIC found in libvirt's runtime state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestNic {
    pub domain: String,
    pub mac: Option<String>,
}

/// Tap name -> owning domain, from every `*.xml` under `dir`. A missing directory (no
/// libvirt on this host) is an empty map; a file that does not parse is skipped.
#[must_use]
pub fn libvirt_taps(dir: &Path) -> BTreeMap<String, GuestNic> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        match parse_domain_xml(&text) {
            Ok(taps) => out.extend(taps),
            Err(e) => log::debug!("{}: {e}", path.display()),
        }
    }
    out
}

/// The taps named by one domain (or domstatus) XML document.
pub fn parse_domain_xml(text: &str) -> Result<Vec<(String, GuestNic)>, roxmltree::Error> {
    let doc = roxmltree::Document::parse(text)?;
    let Some(domain) = doc.descendants().find(|n| n.has_tag_name("domain")) else {
        return Ok(Vec::new());
    };
    let Some(name) = domain
        .children()
        .find(|n| n.has_tag_name("name"))
        .and_then(|n| n.text())
        .map(str::trim)
    else {
        return Ok(Vec::new());
    };
    let mut taps = Vec::new();
    for iface in domain.descendants().filter(|n| n.has_tag_name("interface")) {
        let child_attr = |tag: &str, attr: &str| {
            iface
                .children()
                .find(|n| n.has_tag_name(tag))
                .and_then(|n| n.attribute(attr))
                .map(str::to_owned)
        };
        if let Some(dev) = child_attr("target", "dev") {
            taps.push((
                dev,
                GuestNic {
                    domain: name.to_owned(),
                    mac: child_attr("mac", "address"),
                },
            ));
        }
    }
    Ok(taps)
}

/// How a port is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortLabel {
    pub name: String,
    pub ifindex: u32,
    /// The owning libvirt domain, when known.
    pub vm: Option<String>,
    /// The guest's MAC (from libvirt), else the port interface's own MAC.
    pub mac: Option<String>,
}

/// Labels for the ports of a bridge: `ports` is `(ifindex, name, interface MAC)`.
#[must_use]
pub fn label_ports(
    ports: impl IntoIterator<Item = (u32, String, Option<String>)>,
    taps: &BTreeMap<String, GuestNic>,
) -> BTreeMap<u32, PortLabel> {
    ports
        .into_iter()
        .map(|(ifindex, name, mac)| {
            let nic = taps.get(&name);
            let label = PortLabel {
                vm: nic.map(|n| n.domain.clone()),
                mac: nic.and_then(|n| n.mac.clone()).or(mac),
                name,
                ifindex,
            };
            (ifindex, label)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = r"<domstatus state='running' pid='4242'>
  <domain type='kvm' id='3'>
    <name>web-1</name>
    <devices>
      <interface type='bridge'>
        <mac address='52:54:00:12:34:56'/>
        <source bridge='br-guest'/>
        <target dev='vnet7'/>
        <model type='virtio'/>
      </interface>
      <interface type='network'>
        <mac address='52:54:00:ab:cd:ef'/>
        <target dev='vnet8'/>
      </interface>
    </devices>
  </domain>
</domstatus>";

    #[test]
    fn finds_taps_of_a_domstatus_file() {
        let taps = parse_domain_xml(STATUS).expect("parses");
        assert_eq!(taps.len(), 2);
        assert_eq!(taps[0].0, "vnet7");
        assert_eq!(taps[0].1.domain, "web-1");
        assert_eq!(taps[0].1.mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(taps[1].0, "vnet8");
    }

    #[test]
    fn labels_fall_back_to_interface() {
        let taps: BTreeMap<_, _> = parse_domain_xml(STATUS)
            .expect("parses")
            .into_iter()
            .collect();
        let l = label_ports(
            [
                (7, "vnet7".to_owned(), Some("fe:54:00:12:34:56".to_owned())),
                (9, "veth0".to_owned(), Some("02:00:00:00:00:09".to_owned())),
            ],
            &taps,
        );
        assert_eq!(l[&7].vm.as_deref(), Some("web-1"));
        assert_eq!(l[&7].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(l[&9].vm, None);
        assert_eq!(l[&9].mac.as_deref(), Some("02:00:00:00:00:09"));
    }

    #[test]
    fn missing_dir_is_empty() {
        assert!(libvirt_taps(Path::new("/nonexistent/guard-test")).is_empty());
    }
}
