//! guardctl: attach guard to a guest bridge, watch it, change its policy.
//!
//! Exit codes (docs/cli.md has the table): 0 success, 1 error (the message names the
//! interface, map or file at fault), 64 bad arguments (`EX_USAGE`), including a bad CIDR, hook
//! or MAC. `status` adds its health codes (2 monitored, 3 unguarded) and `audit` has its own
//! (0 clean, 1 medium, 2 high, 3 error): clap's default of 2 for bad arguments would read as
//! "high findings" there.

mod attach;
mod audit;
mod config;
mod detach;
mod events;
mod exit;
mod feed;
mod metrics;
mod output;
mod ports;
mod rules;
mod run;
mod stats;
mod status;
mod top;

use std::{path::Path, process::ExitCode, sync::LazyLock};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use guard::pins::{self, Location};

/// Drops frames that guests address to the host's MAC but aim at the host's management or
/// storage networks, on every port of a guest bridge (XDP, or TC), before the bridge sees
/// them. Enforcement stays pinned in the kernel when guardctl exits.
#[derive(Parser)]
#[command(name = "guardctl")]
struct Cli {
    /// Operate on a bridge inside the named network namespace (/run/netns/NAME), like
    /// `ip -n`. Pins stay in this host's bpffs under /sys/fs/bpf/guard/NAME/. Use this, not
    /// `ip netns exec`, which hides the host's bpffs.
    #[arg(short = 'n', long, global = true, value_name = "NAME")]
    netns: Option<String>,
    /// More log output (repeat for debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach guard to every port of BRIDGE, pin it, print what it protects, and exit.
    Attach(attach::AttachArgs),
    /// Remove guard from BRIDGE: stops its agent, then hooks, pins and maps. Idempotent.
    Detach(detach::DetachArgs),
    /// Show attached bridges: every port (hook, enforce or monitor, guarded or not, VM),
    /// prefixes, host MACs. Exits 2 when a port only monitors, 3 when one is unguarded.
    Status(status::StatusArgs),
    /// Show counters per port and reason, totals, and rule hits.
    Stats(stats::StatsArgs),
    /// Stream sampled drop events (port/VM, addresses, reason, rule) as lines, JSON lines or
    /// a pcap file, until interrupted (or --count/--timeout).
    Events(events::EventsArgs),
    /// Live terminal view: drop rates per port and reason, top offenders, recent events.
    Top(top::TopArgs),
    /// List or change the policy of an attached bridge, live; `rules save` writes it to the
    /// configuration file.
    Rules(rules::RulesArgs),
    /// The agent: attach (waiting for the bridge to appear), then follow it (ports that come
    /// and go, host MAC, address and route changes, live rule edits) until SIGTERM/SIGINT,
    /// which leave enforcement in place. SIGHUP re-reads the configuration file.
    Run(run::RunArgs),
    /// Configuration file tools.
    Config(config::ConfigArgs),
    /// Check the host's network posture around guest bridges (forwarding, `rp_filter`, ARP,
    /// IPv6, `br_netfilter`, guard on every port); --fix applies the safe sysctl changes.
    Audit(audit::AuditArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) on stdout.
    #[command(hide = true)]
    Man,
}

/// A positive, finite number of seconds (`--watch=SECS`, `--interval`, `--timeout`): anything
/// else is a usage error.
pub fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

impl Cli {
    fn location(&self, bridge: &str) -> Location {
        Location::new(self.netns.as_deref(), bridge)
    }
}

/// `guardctl --version`: the release and the id of the embedded eBPF object (the id status
/// and the state file record for the programs in the kernel).
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (eBPF object {})",
        env!("CARGO_PKG_VERSION"),
        guard::attach::object_id(guard::attach::embedded_object())
    )
});

/// The clap command, with the version that names the eBPF object.
fn command() -> clap::Command {
    Cli::command().version(VERSION.as_str())
}

fn main() -> ExitCode {
    let cli = match command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    match real_main(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("guardctl: {e:#}");
            if e.downcast_ref::<exit::Usage>().is_some() {
                ExitCode::from(exit::USAGE)
            } else if matches!(cli.command, Command::Audit(_)) {
                ExitCode::from(audit::error_status())
            } else {
                ExitCode::from(exit::ERROR)
            }
        }
    }
}

fn real_main(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Config(a) => return Ok(config::run(a)),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut command(), "guardctl", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            // Section 8: system administration commands (it needs root).
            clap_mangen::Man::new(command())
                .section("8")
                .render(&mut std::io::stdout())
                .context("writing the man page")?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    guard::attach::check_privileges()?;
    // Before anything reads or writes pins: a bpffs that is not the one the state's pins are
    // in would make a second, invisible guard.
    pins::check_bpffs_visible(Path::new(pins::RUN_ROOT))?;
    // The metrics listener is bound in the caller's namespace, where its address means what
    // the operator typed (inside `--netns` it would be unreachable from the host).
    let metrics = match &cli.command {
        Command::Run(a) => run::bind_metrics(a)?,
        _ => None,
    };
    if let Some(ns) = &cli.netns {
        // Before the runtime exists: every thread it starts inherits the namespace.
        guard::netns::enter(ns)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        match &cli.command {
            Command::Attach(a) => attach::run(cli, a).await,
            Command::Detach(a) => detach::run(cli, a),
            Command::Status(a) => status::run(cli, a).await,
            Command::Stats(a) => stats::run(cli, a).await,
            Command::Rules(a) => rules::run(cli, a).await,
            Command::Events(a) => events::run(cli, a).await,
            Command::Top(a) => top::run(cli, a).await,
            Command::Run(a) => run::run(cli, a, metrics).await,
            Command::Audit(a) => audit::run(cli, a).await,
            Command::Config(_) | Command::Completions { .. } | Command::Man => {
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
