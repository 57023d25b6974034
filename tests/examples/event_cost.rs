//! What drop events cost the drop path: `BPF_PROG_TEST_RUN` ns/run of the XDP program on an
//! attack frame (host MAC, IPv4 destination in a deny prefix), for two or more objects,
//! interleaved rounds, median.
//!
//! `cargo run -p guard-tests --example event_cost -- OLD.o NEW.o [ROUNDS]`
//!
//! Each object runs with the event lease free (no reader) and an event rate of 100/s where the
//! object has events. `NEW.o` is also run with a reader holding the lease (its frames then go
//! through the rate limit: the first 100 per second are written, the rest suppressed).
#![expect(clippy::unwrap_used, reason = "a measurement tool")]

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, lpm_trie::Key},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use guard_common::{
    ACTION_DENY, CLASS_MANAGEMENT, GlobalConfig, RuleValue, event::EventReader, mac::MacTable,
};

const BRIDGE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x01];
const REPEAT: u32 = 200_000;

fn frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&BRIDGE_MAC);
    f.extend_from_slice(&[0x02, 0, 0, 0, 2, 2, 0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 46, 0, 1, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[10, 99, 0, 2, 192, 0, 2, 1]);
    f.extend_from_slice(&[0x9c, 0x40, 0x0c, 0xbc, 0, 26, 0, 0]);
    f.extend_from_slice(&[0x5a; 18]);
    f
}

struct Subject {
    name: String,
    ebpf: Ebpf,
}

fn setup(path: &str) -> Result<Subject> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let mut ebpf = EbpfLoader::new()
        .load(&bytes)
        .with_context(|| format!("loading {path}"))?;
    let mut macs: Array<_, MacTable> =
        Array::try_from(ebpf.map_mut("GUARD_MAC_TABLE").context("mac table")?)?;
    let mut table = Box::new(macs.get(&0, 0)?);
    table
        .insert(BRIDGE_MAC)
        .map_err(|_| anyhow::anyhow!("mac table full"))?;
    assert!(table.contains(BRIDGE_MAC));
    macs.set(0, *table, 0)?;
    let mut v4: LpmTrie<_, [u8; 4], RuleValue> =
        LpmTrie::try_from(ebpf.map_mut("GUARD_RULES_V4").context("rules")?)?;
    v4.insert(
        &Key::new(24, [192, 0, 2, 0]),
        RuleValue {
            rule_id: 1,
            action: ACTION_DENY,
            class: CLASS_MANAGEMENT,
        },
        0,
    )?;
    let mut cfg: Array<_, GlobalConfig> =
        Array::try_from(ebpf.map_mut("GUARD_CONFIG").context("config")?)?;
    // An old object reads only `flags` (the rest was reserved and is ignored). The frames
    // measured hit a deny prefix, which decides before the route check would run.
    cfg.set(
        0,
        GlobalConfig {
            flags: 0,
            event_rate: 100,
            bridge_ifindex: 0,
            generation: 0,
        },
        0,
    )?;
    let prog: &mut Xdp = ebpf
        .program_mut("guard_xdp")
        .context("guard_xdp")?
        .try_into()?;
    prog.load()?;
    Ok(Subject {
        name: path.to_owned(),
        ebpf,
    })
}

fn set_lease(s: &mut Subject, until_ns: u64) -> Result<()> {
    let mut lease: Array<_, EventReader> =
        Array::try_from(s.ebpf.map_mut("GUARD_EV_LEASE").context("lease")?)?;
    lease.set(0, EventReader { until_ns }, 0)?;
    Ok(())
}

fn run(s: &Subject, data: &[u8], verdict: u32) -> Result<f64, ProgramError> {
    let prog: &Xdp = s.ebpf.program("guard_xdp").unwrap().try_into()?;
    let r = prog.test_run(TestRunOptions {
        data_in: Some(data),
        repeat: REPEAT,
        ..TestRunOptions::default()
    })?;
    assert_eq!(r.return_value, verdict, "unexpected XDP verdict");
    // The kernel's per-run time (whole ns: total / repeat, truncated). Wall time around the
    // call would add the test-run loop's own overhead and more scheduler noise.
    #[expect(clippy::cast_precision_loss, reason = "a duration in ns")]
    Ok(r.duration.as_nanos() as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 2, "usage: event_cost OLD.o NEW.o [ROUNDS]");
    let rounds: usize = args.get(2).map_or(Ok(31), |r| r.parse())?;
    let data = frame();
    let old = setup(&args[0])?;
    let new = setup(&args[1])?;
    let mut reader = setup(&args[1])?;
    reader.name = format!("{} (reader attached)", args[1]);
    set_lease(&mut reader, u64::MAX)?;
    // The hot path: the same frame to a MAC that is not the host's (XDP_PASS, not_host).
    let mut hot = data.clone();
    hot[..6].copy_from_slice(&[0x02, 0, 0, 0, 9, 9]);
    let mut t = [Vec::new(), Vec::new(), Vec::new()];
    let mut h = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, s) in [&old, &new, &reader].into_iter().enumerate() {
            t[i].push(run(s, &data, 1)?);
        }
        for (i, s) in [&old, &new].into_iter().enumerate() {
            h[i].push(run(s, &hot, 2)?);
        }
    }
    let hm: Vec<f64> = h.iter_mut().map(|v| median(v)).collect();
    println!(
        "hot path (not addressed to the host): {:.1} ns old, {:.1} ns new",
        hm[0], hm[1]
    );
    // The mean as well as the median: per-round values are whole nanoseconds, and the
    // mean over many rounds resolves differences below one.
    #[expect(clippy::cast_precision_loss, reason = "a round count")]
    let mean: Vec<f64> = t
        .iter()
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        .collect();
    let m: Vec<f64> = t.iter_mut().map(|v| median(v)).collect();
    for ((s, ns), avg) in [&old, &new, &reader].iter().zip(&m).zip(&mean) {
        println!("{ns:5.1} ns/run median, {avg:6.2} mean  {}", s.name);
    }
    println!(
        "means: no reader vs without events: {:+.1}%",
        (mean[1] / mean[0] - 1.0) * 100.0
    );
    println!(
        "no reader vs without events: {:+.1}%; reader attached: {:+.1}%",
        (m[1] / m[0] - 1.0) * 100.0,
        (m[2] / m[0] - 1.0) * 100.0
    );
    Ok(())
}
