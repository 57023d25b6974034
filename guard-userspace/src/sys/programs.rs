//! guard's programs: loaded from the object (with the maps pinned under the bridge's
//! directory), pinned, or opened from their pins.

use std::fs;

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier, Xdp},
};
use guard_common::{map_names, program_names};

use crate::{
    error::{GuardError, Result},
    layout,
    maps::GuardMaps,
    pins::Location,
};

/// The programs, freshly loaded or opened from their pins.
pub enum Programs {
    Loaded(Box<Ebpf>),
    Pinned {
        xdp: Box<Xdp>,
        tc: Box<SchedClassifier>,
        bridge: Box<SchedClassifier>,
        reply: Box<SchedClassifier>,
    },
}

/// The pin names of the programs (`prog_<name>`).
pub const PROGRAM_PINS: [&str; 4] = ["xdp", "tc", "bridge", "reply"];

impl Programs {
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        match self {
            Self::Loaded(ebpf) => ebpf
                .program_mut(program_names::XDP)
                .ok_or_else(|| GuardError::program(program_names::XDP, missing()))?
                .try_into()
                .map_err(|e| GuardError::program(program_names::XDP, e)),
            Self::Pinned { xdp, .. } => Ok(xdp),
        }
    }

    /// A TC program: the bridge device's backstop, or a port's.
    pub fn tc_for(&mut self, is_bridge: bool) -> Result<&mut SchedClassifier> {
        let name = tc_name(is_bridge);
        match self {
            Self::Loaded(ebpf) => ebpf
                .program_mut(name)
                .ok_or_else(|| GuardError::program(name, missing()))?
                .try_into()
                .map_err(|e| GuardError::program(name, e)),
            Self::Pinned { bridge, .. } if is_bridge => Ok(bridge),
            Self::Pinned { tc, .. } => Ok(tc),
        }
    }

    /// The reply recorder (`guard_reply`, the bridge device's TC egress).
    pub fn reply(&mut self) -> Result<&mut SchedClassifier> {
        let name = program_names::REPLY;
        match self {
            Self::Loaded(ebpf) => ebpf
                .program_mut(name)
                .ok_or_else(|| GuardError::program(name, missing()))?
                .try_into()
                .map_err(|e| GuardError::program(name, e)),
            Self::Pinned { reply, .. } => Ok(reply),
        }
    }
}

pub const fn tc_name(is_bridge: bool) -> &'static str {
    if is_bridge {
        program_names::BRIDGE
    } else {
        program_names::TC
    }
}

impl Programs {
    /// The programs pinned for `loc`.
    pub fn from_pins(loc: &Location) -> Result<Self> {
        let xdp = Xdp::from_pin(
            loc.prog_pin("xdp"),
            aya_obj::programs::XdpAttachType::Interface,
        )
        .map_err(|e| GuardError::program(program_names::XDP, e))?;
        let tc = SchedClassifier::from_pin(loc.prog_pin("tc"))
            .map_err(|e| GuardError::program(program_names::TC, e))?;
        let bridge = SchedClassifier::from_pin(loc.prog_pin("bridge"))
            .map_err(|e| GuardError::program(program_names::BRIDGE, e))?;
        let reply = SchedClassifier::from_pin(loc.prog_pin("reply"))
            .map_err(|e| GuardError::program(program_names::REPLY, e))?;
        Ok(Self::Pinned {
            xdp: Box::new(xdp),
            tc: Box::new(tc),
            bridge: Box::new(bridge),
            reply: Box::new(reply),
        })
    }

    /// Are all the programs pinned for `loc`? (A bridge attached by a build without one of
    /// them gets this build's programs.)
    pub fn all_pinned(loc: &Location) -> bool {
        PROGRAM_PINS.iter().all(|p| loc.prog_pin(p).exists())
    }
}

fn missing() -> ProgramError {
    ProgramError::UnexpectedProgramType
}

impl Programs {
    /// Loads `object` with its maps pinned for `loc` (reusing maps pinned there, so counters
    /// keep counting) and loads every program into the kernel. Maps whose layout changed are
    /// created beside the old ones: `upgrade` receives that plan, to be promoted once the new
    /// programs run on the hooks (or abandoned).
    pub fn load(
        loc: &Location,
        object: &[u8],
        upgrade: &mut Option<layout::Plan>,
    ) -> Result<(GuardMaps, Self)> {
        let mut loader = EbpfLoader::new();
        let plan = layout::plan(loc, object)?;
        let paths: Vec<_> = map_names::ALL
            .iter()
            .map(|n| (*n, plan.pin_path(loc, n)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        if !plan.replaced.is_empty() {
            *upgrade = Some(plan);
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| GuardError::Load(Box::new(e)))?;
        let maps = GuardMaps::from_ebpf(&mut ebpf)?;
        let mut progs = Self::Loaded(Box::new(ebpf));
        progs
            .xdp()?
            .load()
            .map_err(|e| GuardError::program(program_names::XDP, e))?;
        for is_bridge in [false, true] {
            progs
                .tc_for(is_bridge)?
                .load()
                .map_err(|e| GuardError::program(tc_name(is_bridge), e))?;
        }
        progs
            .reply()?
            .load()
            .map_err(|e| GuardError::program(program_names::REPLY, e))?;
        Ok((maps, progs))
    }

    /// Pins freshly loaded programs (replacing the pins of older ones), then holds them
    /// through their pins: pinned once, they are never pinned again by this process. Programs
    /// opened from their pins are left alone.
    pub fn pin(&mut self, loc: &Location) -> Result<()> {
        if matches!(self, Self::Pinned { .. }) {
            return Ok(());
        }
        for hook in PROGRAM_PINS {
            let path = loc.prog_pin(hook);
            // Pin beside, then rename over the old pin: a reader (`status` takes no lock)
            // never finds the pin missing. bpffs directories implement rename
            // (kernel/bpf/inode.c, bpf_dir_iops); names with a dot are refused there
            // (bpf_lookup), hence `_new`.
            let new = loc.prog_pin(&format!("{hook}_new"));
            let _ = fs::remove_file(&new);
            let res = match hook {
                "xdp" => self.xdp()?.pin(&new),
                "tc" => self.tc_for(false)?.pin(&new),
                "reply" => self.reply()?.pin(&new),
                _ => self.tc_for(true)?.pin(&new),
            };
            res.map_err(|e| GuardError::Pin {
                path: new.clone(),
                source: Box::new(e),
            })?;
            fs::rename(&new, &path).map_err(|source| GuardError::Bpffs { path, source })?;
        }
        *self = Self::from_pins(loc)?;
        Ok(())
    }

    #[must_use]
    pub const fn is_pinned(&self) -> bool {
        matches!(self, Self::Pinned { .. })
    }
}
