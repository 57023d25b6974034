//! `cargo xtask test [--quick] [-- <libtest args>]`: every check CI runs, in order: rustfmt,
//! clippy for the host crates, clippy for the eBPF crate (those three are `cargo xtask lint`),
//! unit tests, then the privileged
//! tests in the release and the dev profile (the verifier sees different code in each).
//! Every step runs even after one fails, and one closing line gives the totals.
use std::{process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::{
    build::{self, DEBUG_OBJECT_ENV},
    cmd, lint, setup,
};

#[derive(clap::Args)]
pub struct Options {
    /// Skip rustfmt and clippy (for local iteration; CI runs everything).
    #[arg(long)]
    quick: bool,
    /// Passed to every libtest run, e.g. a name filter: `cargo xtask test -- datapath`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Sums of libtest's `test result:` lines.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// How many `test result:` lines: one per test binary and doc-test run.
    runs: u64,
}

impl Totals {
    /// Adds `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
    fn add(&mut self, line: &str) {
        let Some(result) = line.trim().strip_prefix("test result:") else {
            return;
        };
        self.runs += 1;
        for part in result.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!(
            "cargo xtask test needs root: the privileged tests load XDP and TC programs and \
             create namespaces, bridges and veths. Run it as root (e.g. `sudo -E cargo xtask test`)."
        );
    }
    let start = Instant::now();
    let env = setup::run()?;
    // Everything in the release profile: the unit and privileged tests then share one build of
    // the dependencies with guardctl and guard-lab (which the lab tests run), which matters on
    // CI's 2 cores. Both eBPF objects are exercised whatever the host profile: the datapath
    // tests load the embedded release object and the debug object named by
    // GUARD_EBPF_DEBUG_OBJECT.
    let built = build::build(&env, true)?;
    let root = &built.workspace.root;

    let mut failed_steps = Vec::new();
    if !options.quick {
        // rustfmt and both clippy runs: `cargo xtask lint`, which needs no root.
        failed_steps.extend(lint::check(&env, &built.workspace));
    }

    // The libtest runs, whose results are counted.
    let mut steps: Vec<(&str, Command)> = Vec::new();
    let mut unit = env.host_cargo();
    unit.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "guard-ebpf",
        "--exclude",
        "guard-tests",
    ]);
    steps.push(("unit tests", unit));

    let mut privileged = env.host_cargo();
    privileged.args(["test", "-p", "guard-tests", "--release"]);
    steps.push(("privileged tests", privileged));

    let mut totals = Totals::default();
    for (name, mut command) in steps {
        println!("test: {name}");
        // Run every test binary even when one fails, so the totals are complete.
        command
            .current_dir(root)
            .args(["--no-fail-fast", "--"])
            .args(&options.args)
            .env(DEBUG_OBJECT_ENV, &built.debug_object);
        let ok = cmd::run_tee(&mut command, |line| totals.add(line))
            .with_context(|| format!("step `{name}`"))?;
        if !ok {
            failed_steps.push(name);
        }
    }

    // The bench's smoke run: every contender loads and gives the expected verdicts (the
    // numbers are not judged here: timing belongs to `cargo xtask bench`, not to tests).
    println!("test: bench smoke run (cargo xtask bench --quick)");
    if let Err(err) = crate::bench::bench(&built, true, None) {
        println!("test: bench smoke run FAILED: {err:#}");
        failed_steps.push("bench smoke run");
    }
    if !vm_matrix(options.quick, &built) {
        failed_steps.push("VM matrix");
    }

    let Totals {
        passed,
        failed,
        ignored,
        runs,
    } = totals;
    let verdict = if failed_steps.is_empty() {
        "ok".to_owned()
    } else {
        format!("FAILED: {}", failed_steps.join(", "))
    };
    println!(
        "test: {verdict}. {passed} passed; {failed} failed; {ignored} ignored \
         ({runs} test runs) in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    if !failed_steps.is_empty() {
        bail!("cargo xtask test failed: {}", failed_steps.join(", "));
    }
    Ok(())
}

/// The kernel matrix and the tap guest (`cargo xtask vmtest`); false if it failed.
fn vm_matrix(quick: bool, built: &build::Built) -> bool {
    if quick {
        println!("test: the VM matrix is not run with --quick (CI runs it)");
        return true;
    }
    println!("test: VM matrix (cargo xtask vmtest)");
    match crate::vm::vmtest(&crate::vm::VmtestArgs::default(), built) {
        Ok(()) => true,
        Err(err) => {
            println!("test: VM matrix FAILED: {err:#}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn totals_sum_libtest_result_lines() {
        let mut totals = Totals::default();
        for line in [
            "running 4 tests",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.05s",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 5 filtered out; finished in 1.00s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test frame::parse ... ok",
        ] {
            totals.add(line);
        }
        assert_eq!(
            (totals.passed, totals.failed, totals.ignored, totals.runs),
            (5, 1, 1, 3)
        );
    }
}
