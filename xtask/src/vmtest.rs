//! `cargo xtask vmtest`: guard on the kernels users run (Debian's 6.1 and 6.12, in qemu) and
//! a real guest attacking through a tap. The work is in [`crate::vm`].
use crate::{setup, vm};

pub fn run(args: &vm::VmtestArgs) -> anyhow::Result<()> {
    setup::run()?;
    vm::vmtest(args)
}
