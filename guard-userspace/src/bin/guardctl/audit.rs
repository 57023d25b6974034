//! `guardctl audit`.

use std::{
    fmt::Write as _,
    io::{BufRead as _, IsTerminal as _, Write as _},
    path::Path,
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use guard::audit::{self, Applied, EXIT_ERROR, Finding, Report};
use serde::Serialize;

use crate::{Cli, output};

/// Width the text report is wrapped to (fits an 80-column terminal with the indent).
const WIDTH: usize = 78;

#[derive(Args)]
#[command(after_help = "\
Exit status:
  0  no findings, or only informational ones
  1  at least one medium finding
  2  at least one high finding
  3  the audit could not run (an error, or --fix refused)
  64 bad arguments
With --fix the status is that of the audit run after the changes.

--fix writes only the bridge's own sysctls that cannot break a host's legitimate use of
the bridge (rp_filter=1, arp_ignore, arp_filter, arp_announce,
drop_unicast_in_l2_multicast, accept_ra=0; forwarding=0 and disable_ipv6=1 only when the
bridge holds no address of that family). It never writes `all` or `default` values, never
removes addresses, never touches br_netfilter, and changes nothing permanently: make the
values part of the bridge's configuration to keep them.")]
pub struct AuditArgs {
    /// Bridges to audit (default: those guard is attached to in this scope, else every
    /// bridge in the network namespace).
    pub bridges: Vec<String>,
    /// Print JSON (findings, and with --fix the changes made).
    #[arg(long)]
    pub json: bool,
    /// Apply the safe sysctl changes, print each before/after, then audit again.
    #[arg(long)]
    pub fix: bool,
    /// Do not ask before --fix (required when stdin is not a terminal).
    #[arg(long, requires = "fix")]
    pub yes: bool,
}

#[derive(Serialize)]
struct JsonOut<'a> {
    #[serde(flatten)]
    report: &'a Report,
    worst: Option<audit::Severity>,
    exit_status: u8,
    /// With --fix: what was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<&'a [Applied]>,
    /// With --fix: the findings before the changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<&'a [Finding]>,
}

async fn audit_once(cli: &Cli, a: &AuditArgs) -> Result<Report> {
    let handle = guard::discovery::connect().context("opening rtnetlink")?;
    let snap = audit::collect(&handle, cli.netns.as_deref(), &a.bridges)
        .await
        .context("reading the host's state")?;
    Ok(audit::evaluate(&snap))
}

pub async fn run(cli: &Cli, a: &AuditArgs) -> Result<ExitCode> {
    let report = audit_once(cli, a).await?;
    if !a.fix {
        if a.json {
            output::print_json(&output::Schema::new("audit", &json_of(&report, None, None)))?;
        } else {
            print!("{}", render(&report));
        }
        return Ok(ExitCode::from(report.exit_status()));
    }

    let changes = report.safe_changes();
    if !a.json {
        print!("{}", render(&report));
    }
    if changes.is_empty() {
        if a.json {
            output::print_json(&output::Schema::new(
                "audit",
                &json_of(&report, Some(&[]), None),
            ))?;
        } else {
            println!("--fix: nothing that is safe to change automatically");
        }
        return Ok(ExitCode::from(report.exit_status()));
    }
    confirm(a, &changes)?;
    let applied = audit::apply(Path::new(audit::PROC_SYS), &changes)
        .context("applying the sysctl changes")?;
    let after = audit_once(cli, a).await?;
    if a.json {
        output::print_json(&output::Schema::new(
            "audit",
            &json_of(&after, Some(&applied), Some(&report.findings)),
        ))?;
    } else {
        println!("--fix: applied {} change(s):", applied.len());
        for c in &applied {
            let before = c
                .before
                .map_or_else(|| "(absent)".to_owned(), |v| v.to_string());
            println!("  {}: {before} -> {}", c.sysctl, c.after);
        }
        println!("--fix: these last until reboot or until the bridge is recreated\n");
        println!("after --fix:");
        print!("{}", render(&after));
    }
    Ok(ExitCode::from(after.exit_status()))
}

/// `--yes`, or a "y" on a terminal. Refuses rather than guesses when nobody can answer.
fn confirm(a: &AuditArgs, changes: &[audit::SysctlChange]) -> Result<()> {
    if a.yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "--fix would write {} sysctl(s) and stdin is not a terminal to confirm on: \
             add --yes to apply them",
            changes.len()
        );
    }
    let mut err = std::io::stderr();
    let _ = writeln!(err, "--fix will write:");
    for c in changes {
        let _ = writeln!(err, "  {}", c.command());
    }
    let _ = write!(err, "apply? [y/N] ");
    let _ = err.flush();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("--fix: nothing changed (not confirmed)")
    }
}

fn json_of<'a>(
    report: &'a Report,
    applied: Option<&'a [Applied]>,
    before: Option<&'a [Finding]>,
) -> JsonOut<'a> {
    JsonOut {
        report,
        worst: report.worst(),
        exit_status: report.exit_status(),
        applied,
        before,
    }
}

/// The text report, wrapped to 78 columns.
fn render(r: &Report) -> String {
    let mut s = String::new();
    let ns = r
        .netns
        .as_deref()
        .map_or_else(|| "this host".to_owned(), |n| format!("netns {n}"));
    let bridges = if r.bridges.is_empty() {
        "no bridge found".to_owned()
    } else {
        format!("bridge(s) {}", r.bridges.join(", "))
    };
    let _ = writeln!(s, "guard audit of {ns}: {bridges}");
    for f in &r.findings {
        let _ = writeln!(s);
        let scope = f
            .bridge
            .as_deref()
            .map_or(String::new(), |b| format!(" [{b}]"));
        let _ = writeln!(
            s,
            "{:<6} {}{scope}",
            f.severity.to_string().to_uppercase(),
            f.id
        );
        wrap_into(&mut s, &f.title, "  ", "  ");
        for o in &f.observed {
            wrap_into(
                &mut s,
                &format!("{} = {}", o.what, o.value),
                "  seen: ",
                "        ",
            );
        }
        wrap_into(&mut s, &f.explanation, "  why:  ", "        ");
        for (i, fix) in f.fix.iter().enumerate() {
            let head = if i == 0 { "  fix:  " } else { "   or:  " };
            wrap_into(&mut s, fix, head, "        ");
        }
        wrap_into(
            &mut s,
            &fix_note_text(&f.fix_note),
            "  --fix: ",
            "         ",
        );
    }
    let count = |sev| r.findings.iter().filter(|f| f.severity == sev).count();
    let _ = writeln!(
        s,
        "\nsummary: {} high, {} medium, {} info; exit status {}",
        count(audit::Severity::High),
        count(audit::Severity::Medium),
        count(audit::Severity::Info),
        r.exit_status()
    );
    s
}

/// The finding's `fix_note` as the text report says it: the note records what `--fix` does
/// ("applied: ..." / "not applied: ..."), which must not read as if something had been
/// written when nobody asked for `--fix`.
fn fix_note_text(note: &str) -> String {
    if let Some(why) = note.strip_prefix("applied: ") {
        format!("changes this ({why})")
    } else if let Some(why) = note.strip_prefix("not applied: ") {
        format!("leaves this alone ({why})")
    } else {
        note.to_owned()
    }
}

/// Appends `text` word-wrapped to [`WIDTH`], the first line after `first`, the rest after
/// `rest`. A word longer than the line (a long sysctl name) gets a line of its own.
fn wrap_into(s: &mut String, text: &str, first: &str, rest: &str) {
    let mut line = first.to_owned();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > WIDTH {
            let _ = writeln!(s, "{line}");
            rest.clone_into(&mut line);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    let _ = writeln!(s, "{line}");
}

/// The exit status for an error of the audit itself.
pub const fn error_status() -> u8 {
    EXIT_ERROR
}
