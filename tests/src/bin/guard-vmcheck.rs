//! guard-vmcheck: guard's datapath checks, built static (musl) to run inside the test VMs of
//! `cargo xtask vmtest`, on kernels other than the build host's.
//!
//! - `matrix`: the `BPF_PROG_TEST_RUN` table on both programs, then the namespace attack test
//!   with guardctl in every hook mode. Each result is one `VMCHECK {json}` line on stdout (the
//!   serial console), which xtask parses.
//! - `send`: inside a real guest, sends the attack plan out of its NIC (the tap test).
//! - `watch`: on the host side of the tap test, counts what arrives and judges the counters.
//!
//! Exit status is 0 when the checks could run, whatever they found: the verdicts are in the
//! JSON, and xtask decides.

#[path = "guard-vmcheck/frames.rs"]
mod frames;
#[path = "guard-vmcheck/nsattack.rs"]
mod nsattack;
#[path = "guard-vmcheck/plan.rs"]
mod plan;
#[path = "guard-vmcheck/raw.rs"]
mod raw;
#[path = "guard-vmcheck/testrun.rs"]
mod testrun;

use std::{process::ExitCode, thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
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
        /// Hook modes for the namespace test.
        #[arg(long, value_delimiter = ',', default_value = "xdp,xdp-generic,tc,tcx")]
        hooks: Vec<String>,
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

fn matrix(hooks: &[String]) -> Result<()> {
    let kernel = kernel_release();
    let table = testrun::cases();
    for hook in [testrun::Hook::Xdp, testrun::Hook::Tc] {
        emit(
            "testrun",
            &kernel,
            &testrun::run(guard::EBPF_OBJECT, hook, &table),
        )?;
    }
    for hook in hooks {
        emit("nsattack", &kernel, &nsattack::nsattack(hook))?;
    }
    Ok(())
}

fn send(iface: &str, bridge_mac: &str, peer_mac: &str) -> Result<()> {
    // The NIC's driver may still be probing when we start.
    let sys = format!("/sys/class/net/{iface}/address");
    let mut waited = 0;
    let guest = loop {
        if let Ok(s) = std::fs::read_to_string(&sys) {
            break frames::parse_mac(&s)?;
        }
        if waited >= 100 {
            bail!("no interface {iface} after 10 s");
        }
        thread::sleep(Duration::from_millis(100));
        waited += 1;
    };
    nsattack::run(std::process::Command::new("ip").args(["link", "set", iface, "up"]))?;
    let plan = plan::plan(
        frames::parse_mac(bridge_mac)?,
        guest,
        frames::parse_mac(peer_mac)?,
    );
    raw::send(
        None,
        iface,
        &plan::all_frames(&plan),
        Duration::from_millis(5),
    )?;
    emit(
        "sent",
        &kernel_release(),
        &serde_json::json!({ "guest_mac": frames::fmt_mac(guest), "cases": plan }),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Matrix { hooks } => matrix(hooks),
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
        } => frames::parse_mac(guest_mac).and_then(|guest| {
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
