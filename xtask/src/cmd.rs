//! Running child processes: every command is echoed before it runs, and every failure names
//! the command line that failed.
use std::{
    ffi::OsStr,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
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

/// Runs `cmd`, copying its stdout through line by line and handing each line to `each`
/// (stderr is inherited). Returns whether the command succeeded: the caller decides whether a
/// failure ends the run.
pub fn run_tee(cmd: &mut Command, mut each: impl FnMut(&str)) -> anyhow::Result<bool> {
    let line = display(cmd);
    println!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
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
    Ok(status.success())
}
