//! `cargo xtask vmtest`: guard on the kernels users run (Debian's 6.1 and 6.12, in qemu) and
//! a real guest attacking through a tap. The work is in [`crate::vm`].
use crate::{build, setup, vm};

pub fn run(args: &vm::VmtestArgs) -> anyhow::Result<()> {
    let env = setup::run()?;
    // The guests run the debug eBPF object too; release host crates, as `cargo xtask test`
    // builds them (one shared build).
    let built = build::build(&env, true)?;
    vm::vmtest(args, &built)
}
