//! Another program on a port's XDP hook. guard never replaces or detaches it: an attach in an
//! XDP mode is refused instead (see `attach`), and `status` names it. A port's XDP hook holds
//! one program (`dev_xdp_attach` answers `EBUSY` to a second link, `EEXIST` to native while
//! generic is in use); libxdp shares it by attaching its dispatcher, which runs its component
//! programs through `freplace` slots guard does not chain into.

use std::fmt;

use aya::programs::loaded_programs;
use guard_common::program_names;
use serde::Serialize;

/// The name libxdp gives its multi-program dispatcher (xdp-tools,
/// `lib/libxdp/xdp-dispatcher.c.in`).
pub const LIBXDP_DISPATCHER: &str = "xdp_dispatcher";

/// The kernel keeps the first `BPF_OBJ_NAME_LEN - 1` (15) bytes of a program's name.
const BPF_NAME_MAX: usize = 15;

/// A program on an XDP hook that is not guard's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct XdpProgram {
    /// Kernel program id.
    pub id: u32,
    /// Its name as the kernel reports it (at most 15 bytes); empty when it could not be read.
    pub name: String,
    /// libxdp's multi-program dispatcher (`xdp-loader`, `xdp-filter`, ...).
    pub libxdp_dispatcher: bool,
}

impl fmt::Display for XdpProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "an unnamed program"
        } else {
            &self.name
        };
        if self.libxdp_dispatcher {
            write!(
                f,
                "libxdp's multi-program dispatcher {name} (id {})",
                self.id
            )
        } else {
            write!(f, "{name} (id {})", self.id)
        }
    }
}

/// Is `name`, as the kernel reports a program's name, guard's XDP program?
#[must_use]
pub fn is_guard_xdp(name: &str) -> bool {
    let ours = program_names::XDP;
    name == &ours[..ours.len().min(BPF_NAME_MAX)]
}

/// The program `id` found on an XDP hook, unless it is guard's own. A program whose name
/// cannot be read (it went away, or `BPF_OBJ_GET_INFO_BY_FD` failed) counts as another's:
/// guard must not take a hook it cannot prove is its own.
#[must_use]
pub fn foreign_xdp(id: u32) -> Option<XdpProgram> {
    let name = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_default();
    if is_guard_xdp(&name) {
        return None;
    }
    Some(XdpProgram {
        id,
        libxdp_dispatcher: name.starts_with(LIBXDP_DISPATCHER),
        name,
    })
}

/// One port whose XDP hook another program holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SharedXdp {
    pub port: String,
    pub program: XdpProgram,
}

impl fmt::Display for SharedXdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {} has {}", self.port, self.program)
    }
}

/// The refusal of an XDP hook on ports another XDP program holds: what is there, and what
/// to do about it.
#[must_use]
pub fn refusal_message(shared: &[SharedXdp]) -> String {
    let list: Vec<String> = shared.iter().map(ToString::to_string).collect();
    let remove = if shared.iter().any(|s| s.program.libxdp_dispatcher) {
        "`xdp-loader unload PORT --all` for libxdp's, `ip link set dev PORT xdp off` otherwise"
    } else {
        "`ip link set dev PORT xdp off`"
    };
    format!(
        "another XDP program holds the XDP hook: {}. guard never replaces or detaches it, \
         and does not chain into libxdp's dispatcher. Use `--hook tcx` (or `--hook tc` before \
         Linux 6.6): guard then runs on TC ingress, after the XDP program(s), and judges only \
         the frames they pass; or remove the other program first ({remove})",
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_is_recognised_by_its_truncated_name() {
        assert!(is_guard_xdp("guard_xdp"));
        assert!(!is_guard_xdp("xdp_dispatcher"));
        assert!(!is_guard_xdp(""));
        assert!(!is_guard_xdp("guard_xdp_other"));
    }

    #[test]
    fn the_refusal_names_port_program_and_way_out() {
        let shared = [SharedXdp {
            port: "vnet0".into(),
            program: XdpProgram {
                id: 42,
                name: LIBXDP_DISPATCHER.into(),
                libxdp_dispatcher: true,
            },
        }];
        let m = refusal_message(&shared);
        for want in [
            "port vnet0",
            "libxdp's multi-program dispatcher xdp_dispatcher (id 42)",
            "--hook tcx",
            "xdp-loader unload",
        ] {
            assert!(m.contains(want), "{want:?} not in {m}");
        }
    }
}
