//! `guard-lab`: builds the namespace lab, fires the threat model's attacks and the legit flows,
//! and shows what guard stops.
//!
//! ```text
//! guard-lab demo    [--variant base|bridge_ip|nat_host] [--count N]
//! guard-lab attack  [--variant ...] [--count N]   # negative control only
//! guard-lab up      [--variant ...]               # build, print, hold until Ctrl-C
//! guard-lab cleanup                               # delete namespaces of dead lab runs
//! ```

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use guard_tests::lab::{
    self, Lab, Role, Variant,
    attack::{self, CaseResult, Expect, FireOptions},
    legit,
};

#[derive(Parser)]
#[command(about = "guard's namespace lab: attacks, legit flows, demo")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Copy)]
struct LabArgs {
    /// Host configuration: `base`, `bridge_ip` or `nat_host` (default: `base`; the demo runs
    /// `base` and then `nat_host`, whose guests reach the internet through the host's NAT).
    #[arg(long)]
    variant: Option<Variant>,
    /// Frames (datagrams, connections) per case.
    #[arg(long, default_value_t = attack::DEFAULT_COUNT)]
    count: u32,
    /// How long receivers wait after the last frame, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    deadline_ms: u64,
    /// Keep the lab after the run, until Ctrl-C (to look around with `ip -n`).
    #[arg(long)]
    hold: bool,
}

impl LabArgs {
    fn opts(self) -> FireOptions {
        FireOptions {
            count: self.count,
            deadline: Duration::from_millis(self.deadline_ms),
        }
    }
}

#[derive(Subcommand, Clone, Copy)]
enum Cmd {
    /// Attacks and legit flows without guard, then with guard attached; exit 0 only if
    /// guard stopped every attack and every legit flow worked.
    Demo(LabArgs),
    /// Attacks and legit flows without guard (the negative control); exit 0 only if every
    /// attack got through and every legit flow worked.
    Attack(LabArgs),
    /// Builds a lab, prints it, and holds it until Ctrl-C.
    Up(LabArgs),
    /// Deletes lab namespaces left behind by dead processes.
    Cleanup,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("guard-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    lab::install_signal_cleanup()?;
    match cmd {
        Cmd::Demo(a) => demo(a),
        Cmd::Attack(a) => negative_control(a),
        Cmd::Up(a) => {
            let lab = Lab::build(a.variant.unwrap_or(Variant::Base))?;
            print!("{}", lab.describe());
            println!("built in {:.1?}; Ctrl-C deletes it", lab.build_time);
            loop {
                std::thread::park();
            }
        }
        Cmd::Cleanup => {
            for name in lab::netns::delete_stale(lab::NAME_BASE)? {
                println!("deleted {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Attacks and legit flows of one run.
struct Run {
    attacks: Vec<CaseResult>,
    legit: Vec<CaseResult>,
}

fn fire_everything(lab: &Lab, opts: FireOptions) -> Result<Run> {
    Ok(Run {
        attacks: attack::fire_all(lab, opts)?,
        legit: legit::run_all(lab, opts)?,
    })
}

fn negative_control(a: LabArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let lab = Lab::build(a.variant.unwrap_or(Variant::Base))?;
    print!("{}", lab.describe());
    let run = fire_everything(&lab, a.opts())?;
    print_table("attack", "without guard", &run.attacks, None);
    print_table("legit flow", "without guard", &run.legit, None);
    print_boundaries(&run.attacks);
    let invalid: Vec<_> = run
        .attacks
        .iter()
        .filter(|r| !r.as_expected_without_guard())
        .collect();
    let broken: Vec<_> = run.legit.iter().filter(|r| !r.all_delivered()).collect();
    hold(&lab, a.hold);
    lab.teardown()?;
    println!("total {:.1?}", started.elapsed());
    for r in &invalid {
        match r.expect {
            Expect::Delivered => println!(
                "INVALID negative control: {r} (the attack does not work even without guard)"
            ),
            Expect::NotDelivered(_) => println!(
                "CHANGED kernel: {r} now gets through without guard: make it an attack case"
            ),
        }
    }
    for r in &broken {
        println!("BROKEN lab: legit flow {r}");
    }
    Ok(if invalid.is_empty() && broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn demo(a: LabArgs) -> Result<ExitCode> {
    let variants = match a.variant {
        Some(v) => vec![v],
        None => vec![Variant::Base, Variant::NatHost],
    };
    let mut code = ExitCode::SUCCESS;
    for (i, v) in variants.into_iter().enumerate() {
        if i > 0 {
            println!("\n{}\n", "=".repeat(78));
        }
        if demo_one(v, a)? != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

fn demo_one(variant: Variant, a: LabArgs) -> Result<ExitCode> {
    let lab = Lab::build(variant)?;
    print!("{}", lab.describe());
    let before = fire_everything(&lab, a.opts())?;
    print_table("attack", "without guard", &before.attacks, None);

    let after = match with_guard(&lab, a.opts()) {
        Ok(run) => run,
        Err(e) => {
            print_table("legit flow", "without guard", &before.legit, None);
            eprintln!("guard-lab: with guard: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!();
    print_table(
        "attack",
        "without guard",
        &before.attacks,
        Some(&after.attacks),
    );
    print_table(
        "legit flow",
        "without guard",
        &before.legit,
        Some(&after.legit),
    );
    print_boundaries(&before.attacks);
    hold(&lab, a.hold);

    let invalid = before
        .attacks
        .iter()
        .filter(|r| !r.as_expected_without_guard())
        .count();
    // Every case, boundaries included, must deliver nothing with guard attached.
    let leaked = after.attacks.iter().filter(|r| r.delivered > 0).count();
    let missing = before.legit.len().saturating_sub(after.legit.len())
        + before.attacks.len().saturating_sub(after.attacks.len());
    let broken = before
        .legit
        .iter()
        .chain(&after.legit)
        .filter(|r| !r.all_delivered())
        .count();
    println!(
        "{} attacks: {leaked} leaked with guard, {invalid} invalid controls; \
         {} legit flows: {broken} broken",
        before.attacks.len(),
        before.legit.len()
    );
    Ok(
        if invalid == 0 && leaked == 0 && broken == 0 && missing == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// Where `guardctl` is: `$GUARDCTL`, else next to this executable.
fn guardctl_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GUARDCTL") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the guard-lab executable")?;
    Ok(exe.with_file_name("guardctl"))
}

fn guardctl(path: &PathBuf, args: &[&str]) -> Result<String> {
    let line = format!("{} {}", path.display(), args.join(" "));
    let out = Command::new(path)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{line}` (set GUARDCTL to guardctl's path)"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ==== WITH GUARD ===============================================================================
/// Attaches guard to the lab's bridge with `guardctl --netns <host-ns> attach br-guest`,
/// re-fires every attack and legit flow, prints guard's counters (`stats --json`), and
/// detaches again (also when the run fails).
fn with_guard(lab: &Lab, opts: FireOptions) -> Result<Run> {
    let path = guardctl_path()?;
    let host = lab.ns(Role::Host).to_owned();
    let bridge = lab::addr::BRIDGE;
    let attached = guardctl(&path, &["--netns", &host, "attach", bridge])
        .with_context(|| format!("attaching guard to {bridge} in {host}"))?;
    println!(
        "\n$ guardctl --netns {host} attach {bridge}\n{}",
        attached.trim_end()
    );
    report_attachment(lab);
    let run = fire_everything(lab, opts);
    let stats = guardctl(&path, &["--netns", &host, "stats"]);
    let detached = guardctl(&path, &["--netns", &host, "detach", bridge])
        .with_context(|| format!("detaching guard from {bridge} in {host}"));
    let run = run.context("firing with guard attached")?;
    match stats {
        Ok(s) => println!("\n$ guardctl --netns {host} stats\n{}", s.trim_end()),
        Err(e) => eprintln!("guard-lab: {e:#}"),
    }
    detached?;
    Ok(run)
}
// ===============================================================================================

/// Says how many bridge ports carry an XDP program after `guardctl attach` (guard's default
/// hook). A TC/TCX attachment does not show here, so this informs rather than fails.
fn report_attachment(lab: &Lab) {
    let host = lab.netns(Role::Host);
    let with_xdp = lab
        .ports
        .iter()
        .filter(|p| {
            host.ip_json(&["-details", "link", "show", "dev", &p.host.name])
                .ok()
                .and_then(|v| v.get(0).map(|l| l.get("xdp").is_some()))
                .unwrap_or(false)
        })
        .count();
    println!(
        "\nguardctl attach succeeded; XDP program on {with_xdp} of {} ports of {}",
        lab.ports.len(),
        lab::addr::BRIDGE
    );
    if with_xdp == 0 {
        eprintln!(
            "guard-lab: warning: no XDP program on a port of {} in {}\n           \
             (fine only if guard hooks TC/TCX instead)",
            lab::addr::BRIDGE,
            host.name()
        );
    }
}

/// Lists the cases the kernel does not deliver even without guard, with the reason.
fn print_boundaries(attacks: &[CaseResult]) {
    let mut first = true;
    for r in attacks {
        if let Expect::NotDelivered(why) = r.expect {
            if first {
                println!("\n* not delivered by the kernel itself (measured, kept as boundaries):");
                first = false;
            }
            println!("{}", wrap(&format!("{}: {why}", r.name), 78, "    "));
        }
    }
}

/// Wraps `text` at `width` columns, indenting continuation lines.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::from("  ");
    let mut col = 2;
    for word in text.split_whitespace() {
        if col + 1 + word.len() > width && col > indent.len() {
            out.push('\n');
            out.push_str(indent);
            col = indent.len();
        } else if col > 2 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out
}

/// With `--hold`, keeps the lab until Ctrl-C (the signal handler deletes it).
fn hold(lab: &Lab, hold: bool) {
    if hold {
        print!("{}", lab.describe());
        println!("holding the lab; Ctrl-C deletes it");
        loop {
            std::thread::park();
        }
    }
}

/// Prints results as a table that fits 80 columns; with `after`, a second column per case
/// (matched by name) and a verdict.
fn print_table(what: &str, col: &str, before: &[CaseResult], after: Option<&[CaseResult]>) {
    let attacks = what == "attack";
    let frac = |r: &CaseResult| format!("{}/{}", r.delivered, r.sent);
    println!();
    match after {
        None => println!("{what:<30} {col:>14}"),
        Some(_) => println!("{what:<30} {col:>14} {:>14}  verdict", "with guard"),
    }
    println!("{}", "-".repeat(if after.is_some() { 70 } else { 45 }));
    for b in before {
        let Some(after) = after else {
            println!("{:<30} {:>14}", b.name, frac(b));
            continue;
        };
        let Some(w) = after.iter().find(|w| w.name == b.name) else {
            println!("{:<30} {:>14} {:>14}  not run", b.name, frac(b), "-");
            continue;
        };
        let verdict = if !attacks {
            if b.all_delivered() && w.all_delivered() {
                "ok"
            } else {
                "BROKEN"
            }
        } else if !b.as_expected_without_guard() {
            if b.is_working_attack() {
                "INVALID"
            } else {
                "CHANGED"
            }
        } else if !b.is_working_attack() {
            if w.delivered == 0 {
                "kernel*"
            } else {
                "CHANGED"
            }
        } else if w.delivered == 0 {
            "stopped"
        } else {
            "LEAKED"
        };
        println!("{:<30} {:>14} {:>14}  {verdict}", b.name, frac(b), frac(w));
    }
}
