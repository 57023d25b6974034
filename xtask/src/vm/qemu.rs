//! Booting a guest headless under qemu's TCG and following its serial console.
//!
//! TCG, not KVM: `/dev/kvm` exists on these machines but stock Debian kernels do not boot
//! with it here (measured), and TCG is what every CI machine has.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use serde_json::Value;

use super::host;

/// How to boot one guest.
pub struct Boot<'a> {
    pub vmlinux: &'a Path,
    pub initramfs: &'a Path,
    /// Extra kernel command line (`vmcheck.mode=...`).
    pub append: String,
    /// Extra qemu arguments (the NIC).
    pub extra: Vec<String>,
    /// Run qemu inside this network namespace (`ip netns exec`).
    pub netns: Option<&'a str>,
    pub timeout: Duration,
    /// The serial console is saved here.
    pub log: &'a Path,
}

/// What a guest did.
pub struct Guest {
    /// Seconds from starting qemu to the guest's `/init` running.
    pub boot_secs: Option<f64>,
    /// Seconds from starting qemu to its exit.
    pub total_secs: f64,
    /// The `VMCHECK {json}` results, in order.
    pub results: Vec<Value>,
    /// `/init` reached its end (`VMCHECK-DONE`).
    pub done: bool,
    pub timed_out: bool,
    /// Modules that failed to load, and other problems the guest reported.
    pub problems: Vec<String>,
}

pub fn boot(b: &Boot<'_>) -> Result<Guest> {
    let append = format!(
        // quiet + loglevel: keep the console for results; panic=-1 with -no-reboot turns a
        // panic into qemu's exit instead of a hang until the timeout.
        "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off nokaslr rdinit=/init {}",
        b.append
    );
    let mut cmd = match b.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
            c
        }
        None => Command::new("qemu-system-x86_64"),
    };
    cmd.args([
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "768",
        "-smp",
        "1",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ])
    .arg("-kernel")
    .arg(b.vmlinux)
    .arg("-initrd")
    .arg(b.initramfs)
    .arg("-append")
    .arg(&append)
    .args(&b.extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let line = host::describe(&cmd);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("qemu: no stdout"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("qemu: no stderr"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx2.send(format!("qemu: {l}")).is_err() {
                break;
            }
        }
    });
    let mut log =
        std::fs::File::create(b.log).with_context(|| format!("creating {}", b.log.display()))?;
    let _ = writeln!(log, "$ {line}");
    let mut g = follow(&rx, &mut log, start, start + b.timeout);
    if g.timed_out {
        let _ = child.kill();
    }
    let _ = child.wait();
    g.total_secs = start.elapsed().as_secs_f64();
    Ok(g)
}

/// Reads console lines until qemu exits or `deadline`, saving each (with its time since
/// `start`) to `log` and picking out the guest's markers.
fn follow(
    rx: &mpsc::Receiver<String>,
    log: &mut std::fs::File,
    start: Instant,
    deadline: Instant,
) -> Guest {
    let mut g = Guest {
        boot_secs: None,
        total_secs: 0.0,
        results: Vec::new(),
        done: false,
        timed_out: false,
        problems: Vec::new(),
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let _ = writeln!(log, "[{:7.3}] {l}", start.elapsed().as_secs_f64());
                let l = l.trim_end_matches('\r');
                if l.starts_with("VMCHECK-INIT") {
                    g.boot_secs = Some(start.elapsed().as_secs_f64());
                } else if let Some(json) = l.strip_prefix("VMCHECK ") {
                    match serde_json::from_str(json) {
                        Ok(v) => g.results.push(v),
                        Err(e) => g.problems.push(format!("unparsable result ({e}): {json}")),
                    }
                } else if l.starts_with("VMCHECK-DONE") {
                    g.done = true;
                } else if l.starts_with("VMCHECK-MODFAIL")
                    || l.starts_with("VMCHECK-ERROR")
                    || l.contains("Kernel panic")
                {
                    g.problems.push(l.to_owned());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                g.timed_out = true;
                break;
            }
        }
    }
    g
}
