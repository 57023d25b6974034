//! What the agent says: text lines, or JSON lines (`guardctl.run.v1`) with `--json`.

use guard::{
    attach::{Changes, error_chain},
    state::State,
};
use serde::Serialize;

use crate::output;

/// One line of `run --json` (`guardctl.run.v1`).
#[derive(Serialize, Default)]
pub struct AgentEvent<'a> {
    pub schema: String,
    /// `waiting`, `attached`, `hooked`, `released`, `macs`, `policy`, `failed`, `reloaded`,
    /// `bridge-gone`, `detached`, `exiting`.
    pub event: &'a str,
    pub bridge: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Still protected (on `exiting`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// The text line.
    pub message: String,
}

/// Prints agent events as text lines, or as JSON lines with `--json`.
pub struct Out<'a> {
    pub json: bool,
    pub bridge: &'a str,
}

impl<'a> Out<'a> {
    pub fn emit(&self, mut ev: AgentEvent<'a>) {
        ev.bridge = self.bridge;
        if self.json {
            ev.schema = output::schema_name("run");
            match serde_json::to_string(&ev) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("guardctl: serialising an event: {e}"),
            }
        } else {
            // One stream, in order, failures included: it is the agent's log.
            println!("guard: {}", ev.message);
        }
    }

    pub fn say(&self, event: &'a str, message: String) {
        self.emit(AgentEvent {
            event,
            message,
            ..AgentEvent::default()
        });
    }

    pub fn changes(&self, changes: &'a Changes, state: &State) {
        let b = self.bridge;
        for (port, mode, fallback) in &changes.hooked {
            let fb = fallback
                .as_deref()
                .map_or(String::new(), |f| format!(" ({f})"));
            self.emit(AgentEvent {
                event: "hooked",
                port: Some(port),
                hook: Some(mode.to_string()),
                fallback: fallback.as_deref(),
                message: format!("{b}: hooked {port} ({mode}){fb}"),
                ..AgentEvent::default()
            });
        }
        for port in &changes.unhooked {
            self.emit(AgentEvent {
                event: "released",
                port: Some(port),
                message: format!("{b}: released {port}"),
                ..AgentEvent::default()
            });
        }
        if changes.macs_changed {
            self.say(
                "macs",
                format!("{b}: host MAC set updated ({} MACs)", state.host_macs.len()),
            );
        }
        if changes.rule_writes > 0 {
            self.say(
                "policy",
                format!("{b}: policy updated ({} map writes)", changes.rule_writes),
            );
        }
        for (item, e) in &changes.failures {
            self.emit(AgentEvent {
                event: "failed",
                item: Some(item.to_string()),
                error: Some(error_chain(e)),
                message: format!("{b}: {item} not applied: {}", error_chain(e)),
                ..AgentEvent::default()
            });
        }
    }
}
