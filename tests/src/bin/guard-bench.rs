//! `guard-bench`: guard against the floor, xdp-filter and nftables, in one run.
//!
//! ```text
//! cargo build --release -p guard-userspace          # guardctl, used by flood and control
//! cargo run --release -p guard-tests --bin guard-bench -- [--quick] [--out DIR]
//! ```
//!
//! Needs root. Prints aligned tables and the targets of issues 11 and 13, and writes
//! `DIR/guard-bench-<UTC time>.json` and `DIR/latest.json` (DIR defaults to the workspace's
//! `target/bench`). `--quick` is the smoke run of `cargo xtask test`: a few repeats, small
//! policies, short floods, a 16-port bridge.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use guard_tests::bench::{Scale, control, flood, micro, report};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    Micro,
    Flood,
    Control,
}

#[derive(Parser)]
#[command(
    name = "guard-bench",
    about = "guard's datapath and control-plane bench"
)]
struct Args {
    /// Smoke run: few repeats, small policies, short floods (well under a minute).
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON results (default: the workspace's target/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run only these parts (repeatable; default: all).
    #[arg(long, value_enum, value_name = "PART")]
    only: Vec<Part>,
    /// Flood only these setups (`none`, `guard_xdp`, `guard_tc`, `nftables`, `read_drop`, `drop_all`;
    /// repeatable), e.g. to profile one with `perf record -C 0`.
    #[arg(long, value_name = "SETUP")]
    flood_setup: Vec<String>,
    /// Seconds per flood (default: 3, or 0.3 with --quick).
    #[arg(long, value_name = "SECS")]
    flood_secs: Option<f64>,
    /// Also bench this eBPF object as guard variant LABEL in the same micro rounds, and print
    /// its per-round ratio to guard (repeatable): the A/B test of a datapath change.
    #[arg(long, value_name = "LABEL=FILE")]
    candidate: Vec<String>,
    /// Micro rounds (default: 31, or 3 with --quick).
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Micro runs per cell and round (default: 100000, or 5000 with --quick).
    #[arg(long, value_name = "N")]
    repeat: Option<u32>,
    /// Bench this eBPF object instead of the one embedded in guardctl's library (for
    /// micro and the policy load; flood and control use guardctl's own).
    #[arg(long, value_name = "FILE")]
    object: Option<PathBuf>,
    /// xdp-filter's `xdpfilt_alw_ip.o` to bench as the peer (default: Debian's xdp-tools).
    /// Where its verdict differs from the distribution's (a newer one parses ARP), that is
    /// reported, not fatal.
    #[arg(long, value_name = "FILE", default_value = micro::PEER_OBJECT)]
    peer: PathBuf,
}

fn first_line(path: &str, prefix: &str) -> Option<String> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.strip_prefix(prefix)
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
    })
}

fn date(fmt: &str) -> Result<String> {
    let out = Command::new("date")
        .args(["-u", fmt])
        .output()
        .context("running date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn machine() -> Value {
    json!({
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).ok(),
        "cpu": first_line("/proc/cpuinfo", "model name"),
        "cpus": std::thread::available_parallelism().map(usize::from).ok(),
        "mem": first_line("/proc/meminfo", "MemTotal"),
        "loadavg_at_start": loadavg(),
    })
}

/// `/proc/loadavg`: the run's share of a shared machine is part of its result.
fn loadavg() -> Option<String> {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .ok()
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guard-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The scale with the command line's overrides, the flood setups and the candidate objects.
type Settings = (Scale, Vec<flood::Setup>, Vec<(String, Vec<u8>)>);

fn settings(args: &Args) -> Result<Settings> {
    let mut scale = if args.quick {
        Scale::QUICK
    } else {
        Scale::FULL
    };
    if let Some(s) = args.flood_secs {
        scale.flood_secs = s;
    }
    if let Some(r) = args.rounds {
        scale.rounds = r.max(1);
    }
    if let Some(r) = args.repeat {
        scale.repeat = r.max(1);
    }
    let candidates = args
        .candidate
        .iter()
        .map(|c| {
            let (label, file) = c
                .split_once('=')
                .with_context(|| format!("--candidate {c:?}: expected LABEL=FILE"))?;
            // The label is the first word of its contenders' names, beside the built-in ones.
            if label.is_empty()
                || label.contains(char::is_whitespace)
                || ["guard", micro::PREFIX_ONLY].contains(&label)
            {
                bail!(
                    "--candidate {c:?}: LABEL must be one word, not guard or {}",
                    micro::PREFIX_ONLY
                );
            }
            let bytes = fs::read(file).with_context(|| format!("reading {file}"))?;
            Ok((label.to_owned(), bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let flood_only = args
        .flood_setup
        .iter()
        .map(|k| flood::Setup::from_key(k).with_context(|| format!("unknown flood setup {k:?}")))
        .collect::<Result<Vec<_>>>()?;
    Ok((scale, flood_only, candidates))
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("guard-bench needs root (BPF_PROG_TEST_RUN, netns, XDP attach)");
    }
    guard_tests::lab::install_signal_cleanup()?;
    let started = Instant::now();
    let (scale, flood_only, candidates) = settings(&args)?;
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let object: Vec<u8> = match &args.object {
        Some(p) => fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => guard::attach::embedded_object().to_vec(),
    };
    let when = date("+%Y-%m-%dT%H:%M:%SZ")?;
    let machine = machine();
    println!(
        "guard-bench {} ({when}, {machine})",
        if scale.quick { "--quick" } else { "full" }
    );

    let mut targets = Vec::new();
    let mut doc = serde_json::Map::new();
    doc.insert("date".into(), json!(when));
    doc.insert("machine".into(), machine);
    doc.insert("quick".into(), json!(scale.quick));

    if wants(Part::Micro) {
        let t = Instant::now();
        let (loaded, samples) = micro::measure(&object, &candidates, &args.peer, &scale)?;
        let (text, t_micro, j) = report::micro_report(&loaded, &samples, &scale);
        println!(
            "\nmicro: BPF_PROG_TEST_RUN in the routing world, {} interleaved rounds x {} runs, median ±IQR; ratios are medians of per-round ratios ({:.1} s)\n",
            scale.rounds,
            scale.repeat,
            t.elapsed().as_secs_f64()
        );
        print!("{text}");
        targets.extend(t_micro);
        doc.insert("micro".into(), j);
        let (text, j) = report::variants_report(&loaded, &samples, &scale);
        print!("{text}");
        doc.insert("variants".into(), j);
    }
    if wants(Part::Flood) {
        let t = Instant::now();
        let f = flood::Flood::new()?;
        let r = f.run(&scale, &flood_only)?;
        drop(f);
        let (text, t_flood, j) = report::flood_report(&r, &scale);
        println!(
            "\nflood: g1 -> vg1, live-frames generator and the port's receive softirq on CPU 1, {} round(s) x {:.1} s; rx CPU = softirq time per frame ({:.1} s)\n",
            scale.flood_rounds,
            scale.flood_secs,
            t.elapsed().as_secs_f64()
        );
        print!("{text}");
        targets.extend(t_flood);
        doc.insert("flood".into(), j);
    }
    if wants(Part::Control) {
        let t = Instant::now();
        let out_dir = std::env::temp_dir();
        let c = control::run(&object, &scale, &out_dir)?;
        let (text, j) = report::control_report(&c);
        println!("\ncontrol plane ({:.1} s)\n", t.elapsed().as_secs_f64());
        print!("{text}");
        doc.insert("control".into(), j);
    }
    println!("\n{}", report::targets_report(&targets));
    doc.insert("targets".into(), report::targets_json(&targets));
    let total = started.elapsed().as_secs_f64();
    doc.insert("duration_s".into(), json!(total));
    let load_end = loadavg();
    println!(
        "load average at the end: {}",
        load_end.as_deref().unwrap_or("?")
    );
    doc.insert("loadavg_at_end".into(), json!(load_end));

    let dir = args.out.unwrap_or_else(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest
            .parent()
            .unwrap_or(manifest)
            .join("target")
            .join("bench")
    });
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(&Value::Object(doc))?;
    let stamped = dir.join(format!(
        "guard-bench-{}{}.json",
        date("+%Y%m%dT%H%M%SZ")?,
        if scale.quick { "-quick" } else { "" }
    ));
    for p in [&stamped, &dir.join("latest.json")] {
        fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    println!(
        "results: {} (and latest.json); {total:.1} s",
        stamped.display()
    );
    Ok(())
}
