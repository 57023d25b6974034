//! The `/metrics` endpoint of `guardctl run --metrics ADDR`.

use anyhow::{Context as _, Result};
use guard::{
    metrics::{BridgeMetrics, CONTENT_TYPE, render},
    pins::Location,
    state::State,
    stats::collect,
};

/// Serves scrapes until the process ends. Each scrape reads the maps afresh.
pub fn serve(server: &tiny_http::Server, loc: &Location) {
    for req in server.incoming_requests() {
        let resp = if req.url() == "/metrics" || req.url().starts_with("/metrics?") {
            match scrape(loc) {
                Ok(body) => {
                    let resp = tiny_http::Response::from_string(body);
                    // Both parts are ASCII constants, so this cannot fail; without it the
                    // body is still served (as text/plain).
                    match tiny_http::Header::from_bytes(&b"Content-Type"[..], CONTENT_TYPE) {
                        Ok(h) => resp.with_header(h),
                        Err(()) => resp,
                    }
                }
                Err(e) => {
                    eprintln!("guardctl: metrics: {e:#}");
                    tiny_http::Response::from_string(format!("{e:#}\n")).with_status_code(500)
                }
            }
        } else {
            tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
        };
        if let Err(e) = req.respond(resp) {
            log::debug!("metrics: answering a scrape: {e}");
        }
    }
}

fn scrape(loc: &Location) -> Result<String> {
    let counters = collect(loc).with_context(|| format!("reading counters of {:?}", loc.bridge))?;
    let state = State::load(loc)
        .with_context(|| format!("reading the state of {:?}", loc.bridge))?
        .unwrap_or_default();
    let ids = crate::output::prog_ids(loc);
    let vms = crate::ports::vms(&state);
    render(&[BridgeMetrics {
        stats: &counters,
        state: &state,
        xdp_prog_id: ids.xdp,
        tc_prog_id: ids.tc,
        vms: &vms,
    }])
    .context("encoding metrics")
}
