//! guard-vmcheck: guard's datapath checks, built static (musl) to run inside the test VMs of
//! `cargo xtask vmtest`, on kernels other than the build host's.
//!
//! - `matrix`: the datapath case table (`guard_tests::cases`, `BPF_PROG_TEST_RUN`) on both
//!   programs of the embedded release object and of the debug object, then the namespace
//!   attack test with guardctl in every hook mode, then the tunnel attack of issue 11 (GRE,
//!   IPIP, SIT, GENEVE, FOU, VXLAN to the bridge's own address) in the tunnel hook modes. Each
//!   result is one `VMCHECK {json}` line on stdout (the serial console), which xtask parses.
//! - `send`: inside a real guest, sends the attack plan out of its NIC (the tap test).
//! - `watch`: on the host side of the tap test, counts what arrives and judges the counters.
//!
//! Exit status is 0 when the checks could run, whatever they found: the verdicts are in the
//! JSON, and xtask decides.

#[path = "guard-vmcheck/nsattack.rs"]
mod nsattack;
#[path = "guard-vmcheck/plan.rs"]
mod plan;
#[path = "guard-vmcheck/raw.rs"]
mod raw;
#[path = "guard-vmcheck/tunnels.rs"]
mod tunnels;

use std::{process::ExitCode, thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use guard_tests::cases::run_table;
use guard_tests::datapath::Hook;
use guard_tests::lab::frame::{mac_to_string, parse_mac};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "guard-vmcheck", about = "guard's datapath checks for test VMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Test-run table on XDP and TC, then the namespace attack test in every hook mode.
    Matrix {
        /// The debug eBPF object (`target/bpfel-unknown-none/debug/guard`): its table runs
        /// after the embedded release object's.
        #[arg(long)]
        debug_object: Option<std::path::PathBuf>,
        /// Hook modes for the namespace test.
        #[arg(long, value_delimiter = ',', default_value = "xdp,xdp-generic,tc,tcx")]
        hooks: Vec<String>,
        /// Hook modes for the tunnel test.
        #[arg(long, value_delimiter = ',', default_value = "xdp,tcx,tc")]
        tunnel_hooks: Vec<String>,
    },
    /// The attack plan out of IFACE (a real guest's NIC).
    Send {
        #[arg(long, default_value = "eth0")]
        iface: String,
        /// The host bridge's MAC (what the attacks are addressed to).
        #[arg(long)]
        bridge_mac: String,
        /// Another guest's MAC on the same bridge (legitimate traffic).
        #[arg(long)]
        peer_mac: String,
    },
    /// Host side of the tap test: receive until stdin says done, then judge.
    Watch {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        bridge: String,
        /// The bridge port the guest is on (whose counters must match).
        #[arg(long)]
        port: String,
        #[arg(long)]
        peer_netns: String,
        #[arg(long, default_value = "eth0")]
        peer_iface: String,
        #[arg(long)]
        guest_mac: String,
    },
}

/// One result line for xtask.
fn emit<T: Serialize>(check: &str, kernel: &str, body: &T) -> Result<()> {
    let mut v = serde_json::to_value(body).context("serialising a result")?;
    if let Some(o) = v.as_object_mut() {
        o.insert("check".into(), check.into());
        o.insert("kernel".into(), kernel.into());
    }
    println!("VMCHECK {v}");
    Ok(())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// What one object's program did with the case table.
#[derive(Debug, Default, Serialize)]
struct TableOutcome {
    /// `release` or `debug`.
    object: String,
    /// `xdp` or `tc`.
    hook: String,
    passed: usize,
    total: usize,
    failures: Vec<String>,
    /// The load error with the verifier log, if the program was rejected.
    load_error: Option<String>,
}

/// The whole table through one hook's program. A load failure (verifier) is an outcome, not
/// an error: it is what the kernel matrix exists to find.
fn table(object: &[u8], label: &str, hook: Hook) -> TableOutcome {
    let mut out = TableOutcome {
        object: label.to_owned(),
        hook: format!("{hook:?}").to_lowercase(),
        ..TableOutcome::default()
    };
    match run_table(object, &[hook], label) {
        Ok(r) => {
            out.passed = r.passed;
            out.total = r.cases;
            out.failures = r.failures;
        }
        Err(e) => out.load_error = Some(format!("{e:#}")),
    }
    out
}

fn matrix(
    hooks: &[String],
    tunnel_hooks: &[String],
    debug_object: Option<&std::path::Path>,
) -> Result<()> {
    let kernel = kernel_release();
    let mut objects = vec![("release", guard::EBPF_OBJECT.to_vec())];
    if let Some(path) = debug_object {
        let debug = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        objects.push(("debug", debug));
    }
    for (label, object) in &objects {
        for hook in Hook::ALL {
            emit("testrun", &kernel, &table(object, label, hook))?;
        }
    }
    for hook in hooks {
        emit("nsattack", &kernel, &nsattack::nsattack(hook))?;
    }
    for hook in tunnel_hooks {
        emit("tunnels", &kernel, &tunnels::tunnels(hook))?;
    }
    Ok(())
}

fn send(iface: &str, bridge_mac: &str, peer_mac: &str) -> Result<()> {
    // The NIC's driver may still be probing when we start.
    let sys = format!("/sys/class/net/{iface}/address");
    let mut waited = 0;
    let guest = loop {
        if let Ok(s) = std::fs::read_to_string(&sys) {
            break parse_mac(&s)?;
        }
        if waited >= 100 {
            bail!("no interface {iface} after 10 s");
        }
        thread::sleep(Duration::from_millis(100));
        waited += 1;
    };
    nsattack::run(std::process::Command::new("ip").args(["link", "set", iface, "up"]))?;
    let plan = plan::plan(parse_mac(bridge_mac)?, guest, parse_mac(peer_mac)?);
    raw::send(
        None,
        iface,
        &plan::all_frames(&plan),
        Duration::from_millis(5),
    )?;
    emit(
        "sent",
        &kernel_release(),
        &serde_json::json!({ "guest_mac": mac_to_string(&guest), "cases": plan }),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Matrix {
            hooks,
            tunnel_hooks,
            debug_object,
        } => matrix(hooks, tunnel_hooks, debug_object.as_deref()),
        Command::Send {
            iface,
            bridge_mac,
            peer_mac,
        } => send(iface, bridge_mac, peer_mac),
        Command::Watch {
            netns,
            bridge,
            port,
            peer_netns,
            peer_iface,
            guest_mac,
        } => parse_mac(guest_mac).and_then(|guest| {
            let v = nsattack::watch(netns, bridge, port, peer_netns, peer_iface, guest)?;
            emit("tap", &kernel_release(), &v)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guard-vmcheck: {e:#}");
            ExitCode::FAILURE
        }
    }
}
