//! `cargo xtask demo`: the attack lab (guests on a bridge attacking the host's management and
//! storage networks, with and without guard). Not written yet: until it is, this verb fails
//! rather than pretend (a skip is not a pass).
use anyhow::bail;

use crate::{build, setup};

pub fn run() -> anyhow::Result<()> {
    let env = setup::run()?;
    build::build(&env, false)?;
    bail!("cargo xtask demo: not yet available (the attack lab is being written on branch `lab`)")
}
