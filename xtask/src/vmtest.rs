//! `cargo xtask vmtest`: the privileged tests inside a VM, for kernels other than the host's.
//! Not written yet: until it is, this verb fails rather than pretend.
use anyhow::bail;

use crate::{build, setup};

pub fn run() -> anyhow::Result<()> {
    let env = setup::run()?;
    build::build(&env, false)?;
    bail!("cargo xtask vmtest: not yet available")
}
