//! guardctl: attach guard to a guest bridge, watch it, change its policy.
//!
//! Exit codes: 0 success, 1 error (the message names the interface, map or file at fault),
//! 64 bad arguments (`EX_USAGE`). `audit` has its own: 0 clean, 1 medium, 2 high, 3 error;
//! clap's default of 2 for bad arguments would read as "high findings" there.

mod attach;
mod audit;
mod config;
mod detach;
mod events;
mod metrics;
mod output;
mod ports;
mod rules;
mod run;
mod stats;
mod status;
mod top;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use guard::pins::Location;

/// Drops frames that guests address to the host's MAC but aim at the host's management or
/// storage networks, on every port of a guest bridge (XDP, or TC), before the bridge sees
/// them. Enforcement stays pinned in the kernel when guardctl exits.
#[derive(Parser)]
#[command(name = "guardctl", version)]
struct Cli {
    /// Operate on a bridge inside the named network namespace (/run/netns/NAME), like
    /// `ip -n`. Pins stay in this host's bpffs under /sys/fs/bpf/guard/NAME/.
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
    /// Remove guard from BRIDGE: hooks, pins and maps. Idempotent.
    Detach(detach::DetachArgs),
    /// Show attached bridges: ports and hook modes, programs, prefixes, host MACs, mode.
    Status(status::StatusArgs),
    /// Show counters per port and reason, totals, and rule hits.
    Stats(stats::StatsArgs),
    /// Stream sampled drop events (port/VM, addresses, reason, rule) as lines, JSON lines or
    /// a pcap file, until interrupted (or --count/--timeout).
    Events(events::EventsArgs),
    /// Live terminal view: drop rates per port and reason, top offenders, recent events.
    Top(top::TopArgs),
    /// List or change the policy of an attached bridge, live.
    Rules(rules::RulesArgs),
    /// The agent: attach, then follow the bridge (ports that come and go, host MAC and
    /// address changes) until SIGTERM/SIGINT, which leave enforcement in place. SIGHUP
    /// re-reads the configuration file.
    Run(run::RunArgs),
    /// Configuration file tools.
    Config(config::ConfigArgs),
    /// Check the host's network posture around guest bridges (forwarding, `rp_filter`, ARP,
    /// IPv6, `br_netfilter`, guard on every port); --fix applies the safe sysctl changes.
    Audit(audit::AuditArgs),
}

impl Cli {
    fn location(&self, bridge: &str) -> Location {
        Location::new(self.netns.as_deref(), bridge)
    }
}

/// `EX_USAGE` from sysexits.h.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
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
            if matches!(cli.command, Command::Audit(_)) {
                ExitCode::from(audit::error_status())
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn real_main(cli: &Cli) -> Result<ExitCode> {
    if !matches!(cli.command, Command::Config(_)) {
        guard::attach::check_privileges()?;
    }
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
            Command::Status(a) => status::run(cli, a),
            Command::Stats(a) => stats::run(cli, a).await,
            Command::Rules(a) => rules::run(cli, a).await,
            Command::Events(a) => events::run(cli, a).await,
            Command::Top(a) => top::run(cli, a).await,
            Command::Run(a) => run::run(cli, a).await,
            Command::Config(a) => Ok(config::run(a)),
            Command::Audit(a) => audit::run(cli, a).await,
        }
    })
}
