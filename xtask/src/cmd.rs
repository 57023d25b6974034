//! Running child processes: every command is echoed before it runs, and every failure names
//! the command line that failed.
use std::{
    ffi::OsStr,
    fmt::Write as _,
    io::{BufRead as _, BufReader, IsTerminal as _},
    process::{Child, Command, Stdio},
    thread::JoinHandle,
};

use anyhow::{Context as _, bail};

/// The command as a shell-like line, with the environment it sets in front
/// (`CARGO_ENCODED_RUSTFLAGS`'s 0x1f separators are shown escaped).
pub fn display(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        // Only variables we set are interesting; `PATH` is always prefixed and would drown
        // the line.
        if let Some(value) = value
            && key != "PATH"
        {
            let _ = write!(line, "{}={} ", key.display(), quote(value));
        }
    }
    line.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:,@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.escape_debug())
    }
}

/// Runs `cmd` with inherited stdio; an error if it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a cargo command like [`run`], leaving out of its stderr the nested eBPF build's
/// progress lines that aya-build echoes ([`is_nested_progress`]).
pub fn run_cargo(cmd: &mut Command) -> anyhow::Result<()> {
    println!("$ {}", display(cmd));
    let (mut child, line) = spawn(keep_color(cmd).stderr(Stdio::piped()))?;
    let filter = filter_stderr(&mut child);
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    join(filter);
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// aya-build 0.2.0 hands every line the nested `cargo build` of guard-ebpf prints to cargo as
/// a build-script warning, so cargo shows `warning: guard-userspace@0.1.0:    Compiling core
/// ...` for each, and replays them from its cache on every later build, even when nothing is
/// rebuilt. The progress lines (`Compiling`, `Finished`, ...) say nothing the outer build
/// does not; anything else the nested build prints (a compiler warning or error of
/// guard-ebpf) is not progress and is kept. ANSI colours are ignored when matching.
pub fn is_nested_progress(line: &str) -> bool {
    const PROGRESS: &[&str] = &[
        "Compiling",
        "Checking",
        "Finished",
        "Fresh",
        "Blocking",
        "Locking",
        "Updating",
        "Downloading",
        "Downloaded",
        "Adding",
    ];
    let plain = strip_ansi(line);
    let Some(rest) = plain.strip_prefix("warning: guard-userspace@") else {
        return false;
    };
    let Some((_version, echoed)) = rest.split_once(": ") else {
        return false;
    };
    echoed.starts_with(' ')
        && echoed
            .split_whitespace()
            .next()
            .is_some_and(|word| PROGRESS.contains(&word))
}

/// `line` without ANSI escape sequences (`ESC [ ... final byte`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Skip to the final byte of the sequence, a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Piping cargo's stderr makes it think it is not on a terminal: keep its colours when ours
/// is one (the progress bar is lost, as it needs the terminal itself).
fn keep_color(cmd: &mut Command) -> &mut Command {
    if std::io::stderr().is_terminal() {
        cmd.env("CARGO_TERM_COLOR", "always");
    }
    cmd
}

/// Copies the child's piped stderr to ours, line by line, without the nested build's
/// progress lines.
fn filter_stderr(child: &mut Child) -> Option<JoinHandle<()>> {
    let stderr = child.stderr.take()?;
    Some(std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !is_nested_progress(&line) {
                eprintln!("{line}");
            }
        }
    }))
}

fn join(filter: Option<JoinHandle<()>>) {
    if let Some(handle) = filter {
        // The thread only copies lines; if it panicked, the output is what is lost.
        let _ = handle.join();
    }
}

/// Runs `cmd` quietly and returns its stdout; on failure the error carries its stderr.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Runs a cargo command, copying its stdout through line by line and handing each line to
/// `each` (stderr is copied as by [`run_cargo`]). Returns whether the command succeeded: the
/// caller decides whether a failure ends the run.
pub fn run_tee(cmd: &mut Command, mut each: impl FnMut(&str)) -> anyhow::Result<bool> {
    println!("$ {}", display(cmd));
    let (mut child, line) = spawn(
        keep_color(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let filter = filter_stderr(&mut child);
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("no stdout pipe from `{line}`"))?;
    for out in BufReader::new(stdout).lines() {
        let out = out.with_context(|| format!("reading the output of `{line}`"))?;
        println!("{out}");
        each(&out);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    join(filter);
    Ok(status.success())
}

/// Starts `cmd` with the stdio the caller set up; returns the child and the command line (for
/// later messages and logs).
pub fn spawn(cmd: &mut Command) -> anyhow::Result<(Child, String)> {
    let line = display(cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    Ok((child, line))
}

#[cfg(test)]
mod tests {
    use super::is_nested_progress;

    #[test]
    fn only_the_nested_builds_progress_is_left_out() {
        for line in [
            "warning: guard-userspace@0.1.0:    Compiling core v0.0.0 (/root/.rustup/x)",
            "warning: guard-userspace@0.1.0:     Finished `release` profile [optimized] in 1m",
            "\x1b[1m\x1b[33mwarning\x1b[0m\x1b[1m:\x1b[0m guard-userspace@0.1.0:    Compiling syn",
        ] {
            assert!(is_nested_progress(line), "{line}");
        }
        for line in [
            "   Compiling guard-userspace v0.1.0 (/work/guard-userspace)",
            "warning: guard-userspace@0.1.0: warning: unused variable: `x`",
            "warning: guard-userspace@0.1.0: error[E0425]: cannot find value `y`",
            "warning: unused import: `Compiling`",
        ] {
            assert!(!is_nested_progress(line), "{line}");
        }
    }
}
