//! `cargo xtask bench`: per-packet cost of guard against an empty program and xdp-filter,
//! measured with `BPF_PROG_TEST_RUN`. Not written yet: until it is, this verb fails rather
//! than pretend.
use anyhow::bail;

use crate::{build, setup};

pub fn run() -> anyhow::Result<()> {
    let env = setup::run()?;
    build::build(&env, false)?;
    bail!("cargo xtask bench: not yet available")
}
