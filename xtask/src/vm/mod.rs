//! `cargo xtask vmtest`: guard on the kernels users run, and behind a real guest's tap.
//!
//! 1. Kernel matrix: for each pinned Debian kernel (see [`kernel::KERNELS`]), a TCG guest
//!    boots a busybox initramfs carrying guard's static binaries and runs
//!    `guard-vmcheck matrix`: the datapath case table (`BPF_PROG_TEST_RUN`) on the XDP and TC
//!    programs of the release and the debug eBPF object, then the namespace attack test
//!    through guardctl in every hook mode, then the tunnel attack of issue 11 (GRE, IPIP,
//!    SIT, GENEVE, FOU, VXLAN decapsulated on the host) in xdp, tcx and tc mode.
//! 2. Tap: on this host's kernel, a guest whose virtio-net NIC is a tap on `br-guest` sends
//!    the attack plan; guard (XDP on the tap) must stop every attack and pass the rest.
//!
//! Prints one table (kernel, mode, cases passed, attacks blocked, legit flows ok, boot
//! seconds) and fails if any row failed. Guests run one at a time: each TCG guest keeps a
//! core busy, and CI machines have two.

mod host;
mod initramfs;
mod kernel;
mod qemu;
mod tap;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{build::Built, cmd, workspace::Workspace};

/// `cargo xtask vmtest` options.
#[derive(clap::Args, Debug, Clone)]
pub struct VmtestArgs {
    /// Kernels of the matrix: 6.1, 6.12 or all.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Hook modes of the namespace test inside the guests.
    #[arg(long, value_delimiter = ',', default_value = "xdp,xdp-generic,tc,tcx")]
    pub hooks: Vec<String>,
    /// Hook modes of the real-guest test on the tap (empty: skip it).
    #[arg(long, value_delimiter = ',', default_value = "xdp,xdp-generic")]
    pub tap_hooks: Vec<String>,
    /// Seconds a matrix guest may take before it is killed. Under TCG on a busy 2-core host,
    /// Debian 6.1 verifies the 3,500-instruction programs in about 70 s per load.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

impl Default for VmtestArgs {
    /// The command line's defaults, for callers such as `cargo xtask test`.
    fn default() -> Self {
        Self {
            kernel: "all".into(),
            hooks: ["xdp", "xdp-generic", "tc", "tcx"]
                .map(String::from)
                .to_vec(),
            tap_hooks: ["xdp", "xdp-generic"].map(String::from).to_vec(),
            timeout: 900,
        }
    }
}

const MUSL: &str = "x86_64-unknown-linux-musl";

/// The tunnel test's hook modes in the guests (`guard-vmcheck matrix --tunnel-hooks`'s
/// default): xdp, tcx, tc.
const TUNNEL_HOOKS: usize = 3;

/// One line of the result table.
struct Row {
    kernel: String,
    mode: String,
    cases: String,
    attacks: String,
    legit: String,
    boot: Option<f64>,
    ok: bool,
    notes: Vec<String>,
}

impl Row {
    fn new(kernel: &str, mode: String, boot: Option<f64>) -> Self {
        Self {
            kernel: kernel.to_owned(),
            mode,
            cases: "-".into(),
            attacks: "-".into(),
            legit: "-".into(),
            boot,
            ok: true,
            notes: Vec::new(),
        }
    }

    fn fail(&mut self, why: String) {
        self.ok = false;
        self.notes.push(why);
    }
}

/// Builds guardctl and guard-vmcheck static (musl): they run in initramfs guests with no C
/// library, and on this host.
fn build_static(root: &Path, target: &Path) -> Result<(PathBuf, PathBuf)> {
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == MUSL) {
        cmd::run(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    cmd::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "--target", MUSL])
            .args(["-p", "guard-userspace", "--bin", "guardctl"])
            .args(["-p", "guard-tests", "--bin", "guard-vmcheck"]),
    )
    .context("building the static binaries for the guests")?;
    let dir = target.join(MUSL).join("release");
    Ok((dir.join("guardctl"), dir.join("guard-vmcheck")))
}

fn check_root() -> Result<()> {
    let uid = cmd::output(Command::new("id").arg("-u")).context("running id -u")?;
    if uid.trim() != "0" {
        bail!("cargo xtask vmtest needs root (network namespaces, taps, BPF on the host side)");
    }
    Ok(())
}

/// `(major, minor)` of a kernel release string (`6.1.0-56-amd64` -> (6, 1)).
fn version(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The hook mode a port must end up in for a requested hook on `release`: TCX links exist
/// from 6.6 on (`BPF_TCX_INGRESS`); before that guardctl must fall back to a `cls_bpf` filter
/// and say why in `guardctl status`.
/// `name=mode` entries of a row: the bridge device's (named `bridge:<name>`) and the ports'.
fn split_modes(modes: &[String]) -> (Vec<&str>, Vec<&str>) {
    let mut bridge = Vec::new();
    let mut ports = Vec::new();
    for (name, mode) in modes.iter().filter_map(|m| m.split_once('=')) {
        if name.starts_with("bridge:") {
            bridge.push(mode);
        } else {
            ports.push(mode);
        }
    }
    (bridge, ports)
}

fn expected_mode(hook: &str, release: &str) -> &'static str {
    match hook {
        "xdp" => "xdp-native",
        "xdp-generic" => "xdp-generic",
        "tcx" if version(release) >= (6, 6) => "tcx",
        _ => "tc",
    }
}

fn testrun_row(kernel: &str, boot: Option<f64>, r: &Value) -> Row {
    let hook = r.get("hook").and_then(Value::as_str).unwrap_or("?");
    let object = r.get("object").and_then(Value::as_str).unwrap_or("?");
    let mut row = Row::new(kernel, format!("test-run {object} {hook}"), boot);
    let (passed, total) = (num(r, "passed"), num(r, "total"));
    row.cases = format!("{passed}/{total}");
    if let Some(e) = r.get("load_error").and_then(Value::as_str) {
        row.fail(format!("program rejected: {e}"));
    }
    for f in strs(r, "failures") {
        row.fail(f);
    }
    if passed != total {
        row.ok = false;
    }
    row
}

fn attack_row(kernel: &str, release: &str, boot: Option<f64>, r: &Value) -> Row {
    let hook = r.get("hook").and_then(Value::as_str).unwrap_or("?");
    let modes = strs(r, "modes");
    let (bridge, got) = split_modes(&modes);
    let shown = got.first().copied().unwrap_or("?");
    let mut row = Row::new(kernel, format!("ns {hook} -> {shown}"), boot);
    row.attacks = format!("{}/{}", num(r, "attacks_blocked"), num(r, "attacks_sent"));
    row.legit = format!("{}/{}", num(r, "legit_ok"), num(r, "legit_sent"));
    if let Some(e) = r.get("error").and_then(Value::as_str) {
        row.fail(e.to_owned());
        return row;
    }
    let want = expected_mode(hook, release);
    if got.is_empty() || got.iter().any(|m| *m != want) {
        row.fail(format!("ports hooked as {modes:?}, want {want}"));
    }
    // The backstop on the bridge device: TCX where the kernel has it, else cls_bpf.
    let want_bridge = expected_mode("tcx", release);
    if bridge != [want_bridge] {
        row.fail(format!(
            "bridge device hooked as {bridge:?}, want {want_bridge}"
        ));
    }
    let fallbacks = strs(r, "fallbacks");
    if hook == "tcx" && want == "tc" && fallbacks.is_empty() {
        row.fail("fell back from tcx without saying why in guardctl status".into());
    }
    for f in fallbacks {
        row.notes.push(format!("fallback {f}"));
    }
    if num(r, "control_reached") != num(r, "control_sent") {
        row.fail(format!(
            "negative control: only {}/{} attack frames reached the host without guard",
            num(r, "control_reached"),
            num(r, "control_sent")
        ));
    }
    if num(r, "attacks_blocked") != num(r, "attacks_sent")
        || num(r, "legit_ok") != num(r, "legit_sent")
        || r.get("counters_ok").and_then(Value::as_bool) != Some(true)
    {
        row.ok = false;
    }
    for e in strs(r, "errors") {
        row.fail(e);
    }
    row
}

/// A row of the tunnel test: every tunnel's inner packet reached storage without guard
/// (else the control is INVALID), none with guard, and the bridge dropped every frame as
/// `deny_tunnel`.
fn tunnel_row(kernel: &str, release: &str, boot: Option<f64>, r: &Value) -> Row {
    let hook = r.get("hook").and_then(Value::as_str).unwrap_or("?");
    let modes = strs(r, "modes");
    let (bridge, got) = split_modes(&modes);
    let shown = got.first().copied().unwrap_or("?");
    let mut row = Row::new(kernel, format!("tunnels {hook} -> {shown}"), boot);
    if let Some(e) = r.get("error").and_then(Value::as_str) {
        row.fail(e.to_owned());
        return row;
    }
    let want = expected_mode(hook, release);
    if got.is_empty() || got.iter().any(|m| *m != want) {
        row.fail(format!("ports hooked as {modes:?}, want {want}"));
    }
    // The backstop on the bridge device: TCX where the kernel has it, else cls_bpf.
    let want_bridge = expected_mode("tcx", release);
    if bridge != [want_bridge] {
        row.fail(format!(
            "bridge device hooked as {bridge:?}, want {want_bridge}"
        ));
    }
    let cases = r
        .get("cases")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (mut sent, mut blocked) = (0, 0);
    for c in &cases {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
        let n = num(c, "sent");
        let (control, reached) = (num(c, "control_reached"), num(c, "reached"));
        let (dropped, tunnel) = (num(c, "dropped"), num(c, "deny_tunnel"));
        sent += n;
        blocked += n.saturating_sub(reached);
        row.notes.push(format!(
            "{name}: without guard {control}/{n}, with {reached}/{n}, drops {dropped}, \
             deny_tunnel {tunnel} ({})",
            c.get("counters").and_then(Value::as_str).unwrap_or("")
        ));
        if n == 0 || control != n {
            row.fail(format!(
                "INVALID negative control: {name}: {control}/{n} reached storage without guard"
            ));
        }
        if reached > 0 {
            row.fail(format!("LEAKED with guard: {name}: {reached}/{n}"));
        }
        if dropped != n || tunnel != n {
            row.fail(format!(
                "{name}: {dropped} drops, {tunnel} deny_tunnel on the bridge, not {n}"
            ));
        }
    }
    if cases.is_empty() {
        row.fail("no tunnel case ran".into());
    }
    row.attacks = format!("{blocked}/{sent}");
    row
}

fn guest_problems(row: &mut Row, g: &qemu::Guest, timeout: Duration) {
    if g.timed_out {
        row.fail(format!("guest killed after {} s", timeout.as_secs()));
    } else if !g.done {
        row.fail("guest stopped before /init finished".into());
    }
    for p in &g.problems {
        row.fail(p.clone());
    }
}

fn matrix(
    k: &kernel::Prepared,
    files: &initramfs::Files<'_>,
    work: &Path,
    args: &VmtestArgs,
) -> Result<Vec<Row>> {
    let initrd = work.join(format!("initramfs-{}.cpio", k.kernel.short));
    initramfs::build(k, files, &initrd)
        .with_context(|| format!("building the initramfs for {}", k.kernel.package))?;
    let timeout = Duration::from_secs(args.timeout);
    let log = work.join(format!("console-{}.log", k.kernel.short));
    println!(
        "vmtest: booting {} {} (console: {})",
        k.kernel.package,
        k.kernel.version,
        log.display()
    );
    let g = qemu::boot(&qemu::Boot {
        vmlinux: &k.vmlinux,
        initramfs: &initrd,
        append: "vmcheck.mode=matrix".into(),
        extra: vec!["-nic".into(), "none".into()],
        netns: None,
        timeout,
        log: &log,
    })?;
    let name = k.kernel.short;
    let mut rows = Vec::new();
    for r in &g.results {
        let release = r.get("kernel").and_then(Value::as_str).unwrap_or("");
        match r.get("check").and_then(Value::as_str) {
            Some("testrun") => rows.push(testrun_row(name, g.boot_secs, r)),
            Some("nsattack") => rows.push(attack_row(name, release, g.boot_secs, r)),
            Some("tunnels") => rows.push(tunnel_row(name, release, g.boot_secs, r)),
            _ => {}
        }
    }
    // Two objects times two hooks, then the namespace test's hooks, then the tunnel test's.
    let expected = 4 + args.hooks.len() + TUNNEL_HOOKS;
    if rows.len() < expected || g.timed_out || !g.done || !g.problems.is_empty() {
        let mut row = Row::new(name, "guest".into(), g.boot_secs);
        row.notes.push(format!(
            "{} of {expected} results, guest ran {:.1} s",
            rows.len(),
            g.total_secs
        ));
        guest_problems(&mut row, &g, timeout);
        if rows.len() < expected {
            row.ok = false;
        }
        rows.push(row);
    }
    if let Some(r) = rows.first_mut() {
        r.notes.push(format!("guest ran {:.1} s", g.total_secs));
    }
    Ok(rows)
}

fn tap_rows(
    k: &kernel::Prepared,
    bins: &tap::Binaries<'_>,
    initrd: &Path,
    work: &Path,
    hook: &str,
) -> Row {
    let log = work.join(format!("console-tap-{hook}.log"));
    println!(
        "vmtest: tap guest ({hook}) on this host's kernel, guest kernel {} (console: {})",
        k.kernel.short,
        log.display()
    );
    let label = format!("host+tap ({} guest)", k.kernel.short);
    match tap::run(bins, hook, &k.vmlinux, initrd, &log) {
        Err(e) => {
            let mut row = Row::new(&label, format!("tap {hook}"), None);
            row.fail(format!("{e:#}"));
            row
        }
        Ok(o) => {
            let v = &o.verdict;
            let mut row = Row::new(
                &label,
                format!("tap {hook} -> {}", o.mode),
                o.guest.boot_secs,
            );
            row.attacks = format!("{}/{}", num(v, "attacks_blocked"), num(v, "attacks_sent"));
            row.legit = format!("{}/{}", num(v, "legit_ok"), num(v, "legit_sent"));
            if num(v, "attacks_sent") == 0
                || num(v, "attacks_blocked") != num(v, "attacks_sent")
                || num(v, "legit_ok") != num(v, "legit_sent")
                || v.get("counters_ok").and_then(Value::as_bool) != Some(true)
            {
                row.ok = false;
            }
            for e in strs(v, "errors") {
                row.fail(e);
            }
            if !o
                .guest
                .results
                .iter()
                .any(|r| r.get("check").and_then(Value::as_str) == Some("sent"))
            {
                row.fail("the guest did not report sending".into());
            }
            guest_problems(&mut row, &o.guest, tap::TIMEOUT);
            row.notes
                .push(format!("guest ran {:.1} s", o.guest.total_secs));
            row
        }
    }
}

fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:<30} {:>8} {:>9} {:>7} {:>6}  RESULT",
        "KERNEL", "MODE", "CASES", "ATTACKS", "LEGIT", "BOOT"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<22} {:<30} {:>8} {:>9} {:>7} {:>6}  {}",
            r.kernel,
            r.mode,
            r.cases,
            r.attacks,
            r.legit,
            r.boot.map_or_else(|| "-".into(), |b| format!("{b:.1}s")),
            if r.ok { "ok" } else { "FAIL" }
        );
        for n in &r.notes {
            let _ = writeln!(s, "{:<22}   {n}", "");
        }
    }
    s
}

/// The entry point: `cargo xtask vmtest`. `built` is `cargo xtask build`'s output: where the
/// workspace and its target directory are, and the debug eBPF object, which the guests run
/// after the embedded release one.
pub fn vmtest(args: &VmtestArgs, built: &Built) -> Result<()> {
    let debug_object = &built.debug_object;
    check_root()?;
    let kernels = kernel::select(&args.kernel)?;
    host::ensure_tools()?;
    let Workspace { root, target_dir } = &built.workspace;
    let work = target_dir.join("vm");
    let (guardctl, vmcheck) = build_static(root, target_dir)?;
    let bins = [guardctl.clone(), vmcheck.clone()];
    let files = initramfs::Files {
        bins: &bins,
        debug_object,
    };
    let cache = work.join("cache");
    let mut rows = Vec::new();
    let mut prepared = Vec::new();
    for k in kernels {
        let p = kernel::prepare(k, &cache)
            .with_context(|| format!("preparing kernel {} {}", k.package, k.version))?;
        rows.extend(matrix(&p, &files, &work, args)?);
        prepared.push(p);
    }
    // The tap guest runs the newest selected kernel: it only sends; guard runs on the host.
    if let Some(k) = prepared.last() {
        let initrd = work.join(format!("initramfs-{}.cpio", k.kernel.short));
        let b = tap::Binaries {
            guardctl: &guardctl,
            vmcheck: &vmcheck,
        };
        for hook in args.tap_hooks.iter().filter(|h| !h.is_empty()) {
            rows.push(tap_rows(k, &b, &initrd, &work, hook));
        }
    }
    let table = render(&rows);
    print!("{table}");
    std::fs::write(work.join("result.txt"), &table)
        .with_context(|| format!("writing {}", work.join("result.txt").display()))?;
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!(
            "vmtest: {failed} row(s) failed (consoles under {})",
            work.display()
        );
    }
    println!("vmtest: all {} rows ok", rows.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{expected_mode, version};

    #[test]
    fn defaults_match_the_command_line() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: super::VmtestArgs,
        }
        let parsed = Cli::parse_from(["vmtest"]).args;
        let default = super::VmtestArgs::default();
        assert_eq!(parsed.kernel, default.kernel);
        assert_eq!(parsed.hooks, default.hooks);
        assert_eq!(parsed.tap_hooks, default.tap_hooks);
        assert_eq!(parsed.timeout, default.timeout);
    }

    #[test]
    fn versions_and_expected_modes() {
        assert_eq!(version("6.1.0-56-amd64"), (6, 1));
        assert_eq!(version("6.12.117+deb12-amd64"), (6, 12));
        assert_eq!(expected_mode("tcx", "6.1.0-56-amd64"), "tc");
        assert_eq!(expected_mode("tcx", "6.12.117+deb12-amd64"), "tcx");
        assert_eq!(expected_mode("xdp", "6.1.0-56-amd64"), "xdp-native");
    }
}
