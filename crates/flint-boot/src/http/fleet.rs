//! The fleet view: `GET /api/machines` (JSON, `docs/journeys.md`) and `GET /`, a page an
//! operator reads from across the room: counts per phase, one row per machine, stuck and failed
//! machines first and marked, refreshing itself.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use crate::inventory::Origin;
use crate::journey::{Fleet, Machine, Phase};

/// Seconds between the page's reloads.
const REFRESH_S: u32 = 5;

#[derive(Debug, Deserialize)]
pub(super) struct MachinesQuery {
    /// The latest steps of each machine to include (all by default; `flint-boot status` asks
    /// for none, the last step being in every machine anyway).
    steps: Option<usize>,
}

pub(super) async fn machines(
    State(state): State<AppState>,
    Query(query): Query<MachinesQuery>,
) -> Response {
    let mut fleet = state.fleet();
    if let Some(keep) = query.steps {
        for machine in &mut fleet.machines {
            let drop = machine.steps.len().saturating_sub(keep);
            machine.steps.drain(..drop);
        }
    }
    let mut json = serde_json::to_string(&fleet).expect("a fleet always serializes");
    json.push('\n');
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        json,
    )
        .into_response()
}

pub(super) async fn page(State(state): State<AppState>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        render(&state.fleet()),
    )
        .into_response()
}

/// The page. Everything a client sent is escaped (the journeys keep printable ASCII only, and
/// `<`, `>`, `&` and quotes are printable).
pub fn render(fleet: &Fleet) -> String {
    let server = escape(&fleet.server);
    let stuck = fleet.counts.get("stuck").copied().unwrap_or(0);
    let failed = fleet.counts.get("failed").copied().unwrap_or(0);
    let mut out = String::with_capacity(4096 + 256 * fleet.machines.len());
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{stuck} stuck, {failed} failed, {total} machines: flint-boot on {server}</title>\
         <style>{STYLE}</style></head><body>\n\
         <h1>flint-boot on {server}</h1>\n<p class=\"counts\">",
        total = fleet.machines.len(),
    );
    for phase in Phase::ALL {
        let n = fleet.counts.get(phase.name()).copied().unwrap_or(0);
        let _ = write!(
            out,
            "<span id=\"count-{name}\">{name} <b>{n}</b></span>",
            name = phase.name()
        );
    }
    let alarm = |n: usize| if n > 0 { "alarm" } else { "calm" };
    let _ = writeln!(
        out,
        "<span id=\"count-stuck\" class=\"{}\">stuck <b>{stuck}</b></span>\
         <span id=\"count-failed\" class=\"{}\">failed <b>{failed}</b></span></p>",
        alarm(stuck),
        alarm(failed),
    );
    if let Some(origin) = &fleet.inventory {
        inventory_line(&mut out, origin, fleet.generated_at_ms);
    }
    if fleet.machines.is_empty() {
        out.push_str("<p id=\"empty\">No machine has asked this server yet.</p>\n");
    } else {
        out.push_str(
            "<table id=\"machines\"><thead><tr><th>machine</th><th>MAC</th><th>address</th>\
             <th>phase</th><th>last step</th><th>ago</th></tr></thead><tbody>\n",
        );
        for machine in &fleet.machines {
            row(&mut out, machine);
        }
        out.push_str("</tbody></table>\n");
    }
    let _ = write!(
        out,
        "<p class=\"note\">Stuck: no step for {} or more ({} in its installer; a healthy \
         machine never is). Failed: a service's latest report is a failure. Reloads every \
         {REFRESH_S} s; the same as JSON at <a href=\"api/machines\">api/machines</a>.</p>\n\
         </body></html>\n",
        ago(fleet.stuck_after_s),
        ago(fleet.install_stuck_after_s),
    );
    out
}

/// Where the inventory comes from; marked when etcd cannot be reached, so an operator knows a
/// change written there has not reached this server yet.
fn inventory_line(out: &mut String, origin: &Origin, now_ms: u64) {
    let revision = origin
        .revision
        .map(|r| format!(" at revision {r}"))
        .unwrap_or_default();
    let from = format!("{} {}{revision}", origin.source, escape(&origin.name));
    match &origin.stale {
        None => {
            let _ = writeln!(
                out,
                "<p id=\"inventory\" class=\"note\">inventory: {from}</p>"
            );
        }
        Some(stale) => {
            let _ = writeln!(
                out,
                "<p id=\"inventory\" class=\"alarm\">INVENTORY MAY BE OUT OF DATE: etcd \
                 unreachable for {}; serving the last inventory read, {from} ({})</p>",
                ago(now_ms.saturating_sub(stale.since_ms) / 1000),
                escape(&stale.reason)
            );
        }
    }
}

fn row(out: &mut String, m: &Machine) {
    let name = m.name.as_deref().map_or_else(|| "-".to_owned(), escape);
    let ip = m.ip.as_deref().map_or_else(|| "-".to_owned(), escape);
    let phase = match (m.stuck, m.failed) {
        (true, true) => format!("FAILED, STUCK in {}", m.phase.name()),
        (true, false) => format!("STUCK in {}", m.phase.name()),
        (false, true) => format!("FAILED in {}", m.phase.name()),
        (false, false) => m.phase.name().to_owned(),
    };
    let joined = if m.joined.is_empty() {
        String::new()
    } else {
        // Service names: a fixed set, nothing of a client's.
        format!(
            " <span class=\"joined\">joined: {}</span>",
            m.joined.join(" ")
        )
    };
    let class = match (m.stuck, m.failed) {
        (true, true) => "stuck failed alarm",
        (true, false) => "stuck alarm",
        (false, true) => "failed alarm",
        (false, false) => "ok",
    };
    let _ = writeln!(
        out,
        "<tr class=\"{class}\" data-mac=\"{mac}\" data-phase=\"{phase_name}\"><td>{name}</td>\
         <td class=\"mac\">{mac}</td><td>{ip}</td><td class=\"phase\">{phase}{joined}</td>\
         <td>{step}: {detail}</td><td>{ago}</td></tr>",
        mac = escape(&m.mac),
        phase_name = m.phase.name(),
        step = m.last_step.step.name(),
        detail = escape(&m.last_step.detail),
        ago = ago(m.idle_s),
    );
}

/// `4s`, `2m 05s`, `3h 10m`: read at a glance.
pub fn ago(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;font-size:22px;margin:1em;background:#111;\
color:#eee}h1{font-size:28px;margin:0 0 .5em}.counts span{display:inline-block;\
margin:0 1.2em .6em 0;font-size:34px}.counts .alarm{color:#fff;background:#b01515;\
padding:0 .3em}table{border-collapse:collapse;width:100%}th,td{padding:.3em .6em;\
text-align:left;border-bottom:1px solid #333}tr.alarm{background:#7a1010;font-weight:bold}\
.joined{font-size:16px;color:#9c9;font-weight:normal}tr.alarm .joined{color:#eee}\
td.mac{font-family:monospace}td:last-child{white-space:nowrap}.note{color:#999;font-size:16px}a{color:#9cf}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_client_sent_is_escaped() {
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(ago(4), "4s");
        assert_eq!(ago(125), "2m 05s");
        assert_eq!(ago(3 * 3600 + 600), "3h 10m");
    }
}
