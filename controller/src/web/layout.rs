//! The page shell every screen shares: head, navigation, main landmark, and the
//! small pieces (state badges, progress bars, durations) that several pages show.
//!
//! The style sheet and script are compiled in and served from `/static/`, so the UI
//! needs no build step and works offline.

use maud::{html, Markup, DOCTYPE};

use cairn_api::instances::InstanceState;
use cairn_api::users::Principal;

/// Who is looking at a page, for the navigation.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub name: Option<String>,
    pub admin: bool,
    /// The form token for this session's POSTs.
    pub csrf: String,
}

impl Viewer {
    pub fn of(p: &Principal, csrf: String) -> Self {
        Viewer {
            name: Some(p.name().to_string()),
            admin: p.is_admin(),
            csrf,
        }
    }
}

/// A whole page. `current` is the navigation entry to mark as the current page.
pub fn page(title: &str, viewer: Option<&Viewer>, current: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Cairn" }
                link rel="stylesheet" href="/static/cairn.css";
                script src="/static/cairn.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/" { span aria-hidden="true" { "▲" } " Cairn" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            ul {
                                (nav_item("/", "Catalogue", current))
                                (nav_item("/instances", "My instances", current))
                                (nav_item("/volumes", "Volumes", current))
                                (nav_item("/datasets", "Datasets", current))
                                (nav_item("/groups", "Groups", current))
                                @if v.admin {
                                    (nav_item("/admin/hosts", "Hosts", current))
                                    (nav_item("/admin/instances", "All instances", current))
                                    (nav_item("/admin/blueprints", "Blueprints", current))
                                    (nav_item("/admin/users", "Users", current))
                                }
                            }
                        }
                        form class="logout" method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            span class="who" { (v.name.as_deref().unwrap_or("")) }
                            button type="submit" class="link" { "Log out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn nav_item(href: &str, label: &str, current: &str) -> Markup {
    html! {
        li {
            @if href == current {
                a href=(href) aria-current="page" { (label) }
            } @else {
                a href=(href) { (label) }
            }
        }
    }
}

/// A message box: `kind` is `error`, `notice` or `info`.
pub fn message(kind: &str, text: &str) -> Markup {
    let role = if kind == "error" { "alert" } else { "status" };
    html! { p class={ "msg " (kind) } role=(role) { (text) } }
}

/// How far through its lifecycle an instance is, for progress bars.
pub fn progress(state: InstanceState) -> u8 {
    match state {
        InstanceState::Queued => 5,
        InstanceState::Scheduled => 20,
        InstanceState::Preparing => 40,
        InstanceState::Starting => 70,
        InstanceState::Running | InstanceState::Unreachable => 100,
        InstanceState::Stopping => 100,
        InstanceState::Stopped | InstanceState::Failed => 100,
    }
}

/// [`progress`], refined while the image is pulled: `preparing` with the agent's
/// "pulling 35%" moves the bar from 25 % to 65 % as the pull goes (a big image is
/// most of a first launch's wait, and a bar that stands still looks stuck).
pub fn progress_of(state: InstanceState, reason: Option<&str>) -> u8 {
    match (state, reason.and_then(pull_percent)) {
        // 25 + at most 40: always fits a u8.
        (InstanceState::Preparing, Some(p)) => 25 + (u16::from(p.min(100)) * 40 / 100) as u8,
        _ => progress(state),
    }
}

/// `35` from the agent's `pulling 35%`.
fn pull_percent(reason: &str) -> Option<u8> {
    reason
        .strip_prefix("pulling ")?
        .strip_suffix('%')?
        .parse()
        .ok()
}

/// The word for an instance state, as the API spells it.
pub fn state_name(state: InstanceState) -> &'static str {
    state.as_str()
}

/// A coloured badge for a state (the word is always there: colour is never the only
/// signal).
pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge s-" (state) } { (state) } }
}

/// `1 image`, `3 images`.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A labelled progress bar; several in a `.bars` container share one grid, so their
/// bars line up.
pub fn bar(label: &str, value: u64, max: u64, text: &str) -> Markup {
    let pct = value
        .saturating_mul(100)
        .checked_div(max)
        .unwrap_or(0)
        .min(100);
    let over = value > max;
    html! {
        div class="bar" {
            span class="bar-label" { (label) }
            progress class=[over.then_some("over")] max="100" value=(pct) aria-label=(label) { (pct) "%" }
            span class="bar-text" { (text) @if over { " " span class="warn" { "(over capacity)" } } }
        }
    }
}

/// `3 h 5 min`, `42 s`: a span of time for people.
pub fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 if (secs % 3600) / 60 == 0 => format!("{} h", secs / 3600),
        3600..=86_399 => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
        _ if (secs % 86_400) / 3600 == 0 => format!("{} d", secs / 86_400),
        _ => format!("{} d {} h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

pub fn mib(bytes: u64) -> String {
    let m = bytes / (1024 * 1024);
    if m >= 10 * 1024 {
        format!("{:.0} GiB", m as f64 / 1024.0)
    } else if m >= 1024 {
        format!("{:.1} GiB", m as f64 / 1024.0)
    } else {
        format!("{m} MiB")
    }
}

/// The style sheet: system fonts, high contrast, visible focus, one column on phones.
pub const CSS: &str = r#"
:root { --fg:#1b1f24; --muted:#4f5964; --bg:#f7f8fa; --card:#fff; --line:#d5dae0;
  --accent:#0b5cad; --accent-fg:#fff; --ok:#1a7f37; --warn:#9a6700; --bad:#b42318; }
* { box-sizing: border-box; }
[hidden] { display:none !important; }
body { margin:0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color:var(--fg); background:var(--bg); }
a { color:var(--accent); }
:focus-visible { outline:3px solid #f5a623; outline-offset:2px; }
.skip { position:absolute; left:-999px; top:0; background:#fff; padding:.5rem; }
.skip:focus { left:.5rem; z-index:10; }
header.top { display:flex; flex-wrap:wrap; align-items:center; gap:.5rem 1.5rem;
  padding:.6rem 1.2rem; background:#14212f; color:#fff; }
header.top a { color:#fff; text-decoration:none; }
.brand { font-weight:700; font-size:1.15rem; }
nav ul { display:flex; flex-wrap:wrap; gap:.25rem 1rem; list-style:none; margin:0; padding:0; }
nav a[aria-current=page] { text-decoration:underline; text-underline-offset:.3em; }
form.logout { margin-left:auto; display:flex; gap:.6rem; align-items:center; }
.who { color:#c9d4df; }
button.link { background:none; border:0; color:#fff; text-decoration:underline; cursor:pointer; font:inherit; padding:0; }
main { max-width:72rem; margin:0 auto; padding:1rem 1.2rem 3rem; }
main:focus { outline:none; }
h1 { font-size:1.6rem; margin:.5rem 0 1rem; }
h2 { font-size:1.2rem; margin:1.5rem 0 .5rem; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(17rem, 1fr)); gap:1rem; }
.cards.wide { grid-template-columns:repeat(auto-fill, minmax(min(100%, 28rem), 1fr)); }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:1rem;
  display:flex; flex-direction:column; gap:.5rem; }
.card h2 { margin:0; }
.card p { margin:0; color:var(--muted); }
.facts { display:flex; flex-wrap:wrap; gap:.3rem .9rem; font-size:.9rem; color:var(--muted); margin:0; padding:0; list-style:none; }
.card form { margin-top:auto; }
button, .button { display:inline-block; font:inherit; font-weight:600; padding:.45rem 1rem; border-radius:6px;
  border:1px solid var(--accent); background:var(--accent); color:var(--accent-fg); cursor:pointer; text-decoration:none; }
button.secondary, .button.secondary { background:#fff; color:var(--accent); }
button.danger { background:var(--bad); border-color:var(--bad); }
button[disabled], .button[aria-disabled=true] { opacity:.5; cursor:not-allowed; }
.table-wrap { overflow-x:auto; background:var(--card); border:1px solid var(--line); border-radius:8px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:.45rem .7rem; border-bottom:1px solid var(--line); vertical-align:middle; }
td button, td .button { padding:.25rem .7rem; }
th { font-size:.85rem; text-transform:uppercase; letter-spacing:.03em; color:var(--muted); }
tr:last-child td { border-bottom:0; }
td form { display:inline; }
.badge { display:inline-block; padding:.05rem .5rem; border-radius:999px; font-size:.85rem; font-weight:600;
  background:#e6e9ee; color:#2b3440; }
.s-running, .s-active, .s-enabled, .s-open { background:#dafbe1; color:#0f5323; }
.s-disabled, .s-draining, .s-drained, .s-quarantined { background:#fff1e5; color:#8a3c00; }
section.availability { margin:1rem 0; padding:.8rem 1rem; background:var(--card); border:1px solid var(--line); border-radius:8px; max-width:40rem; }
section.availability h2 { margin-top:0; }
.s-failed, .s-lost { background:#ffebe9; color:#8c1d13; }
.s-queued, .s-scheduled, .s-preparing, .s-starting, .s-joining, .s-unreachable { background:#fff8c5; color:#6b4a00; }
.msg { padding:.6rem .9rem; border-radius:6px; border:1px solid var(--line); background:#fff; }
.msg.error { border-color:var(--bad); color:var(--bad); }
.msg.notice { border-color:var(--ok); color:var(--ok); }
.bars { display:grid; grid-template-columns:max-content minmax(6rem, 1fr) max-content; gap:.35rem .6rem; align-items:center; font-size:.9rem; }
.bar { display:contents; }
.bar-label { white-space:nowrap; color:var(--muted); }
progress.over { accent-color:var(--bad); }
.warn { color:var(--bad); font-weight:600; }
progress { width:100%; height:.8rem; accent-color:var(--accent); }
.big-progress progress { height:1.2rem; }
.stack { display:flex; flex-direction:column; gap:.8rem; }
.row { display:flex; flex-wrap:wrap; gap:.6rem; align-items:center; }
form.fields { display:grid; gap:.8rem; max-width:40rem; background:var(--card); padding:1rem;
  border:1px solid var(--line); border-radius:8px; }
label { font-weight:600; display:block; }
.hint { font-weight:400; color:var(--muted); font-size:.9rem; }
input, select, textarea { font:inherit; padding:.4rem .5rem; border:1px solid #8a949e; border-radius:6px; width:100%; background:#fff; color:var(--fg); }
input[type=checkbox] { width:auto; }
.field-error { color:var(--bad); font-size:.9rem; }
pre.logs { background:#0d1117; color:#e6edf3; padding:.8rem; border-radius:8px; overflow:auto; max-height:28rem; font-size:.85rem; }
dl.props { display:grid; grid-template-columns:max-content 1fr; gap:.3rem 1rem; margin:0; }
dl.props dt { color:var(--muted); }
dl.props dd { margin:0; }
.login { max-width:24rem; }
.muted { color:var(--muted); }
@media (max-width: 40rem) {
  form.logout { margin-left:0; }
  .bars { grid-template-columns:1fr; }
  .bar-text { margin-bottom:.3rem; }
}
"#;

/// The script: live instance progress and on-demand logs, nothing else. Pages work
/// without it (they refresh themselves instead).
pub const JS: &str = r#"
"use strict";
(function () {
  const el = document.querySelector("[data-instance]");
  if (!el) return;
  const id = el.dataset.instance;
  const api = "/api/v1/instances/" + id;
  const pct = { queued: 5, scheduled: 20, preparing: 40, starting: 70, running: 100, stopping: 100, stopped: 100, failed: 100 };
  const terminal = (s) => s === "stopped" || s === "failed";
  const fmt = (s) => s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min" :
    Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  function show(i) {
    const st = i.state;
    const badge = document.getElementById("state");
    badge.textContent = st; badge.className = "badge s-" + st;
    const bar = document.getElementById("progress");
    // Mirrors layout::progress_of: the pull's own percentage while preparing.
    const pulled = st === "preparing" && /^pulling (\d+)%$/.exec(i.state_reason || "");
    const p = pulled ? 25 + Math.floor(Math.min(100, +pulled[1]) * 40 / 100) : (pct[st] || 0);
    bar.value = p; bar.textContent = p + "%";
    document.getElementById("progress-text").textContent =
      st === "running" ? "Ready to open" :
      st === "failed" ? "This instance failed" : st === "stopped" ? "This instance has ended" :
      st === "queued" && i.queue_position ? "Queued — waiting for a free host (position " + i.queue_position + ")" :
      st.charAt(0).toUpperCase() + st.slice(1) + " — " + p + "%";
    const done = terminal(st);
    bar.hidden = done;
    const hist = document.getElementById("history");
    if (hist && Array.isArray(i.transitions)) {
      hist.replaceChildren(...i.transitions.map((t) => {
        const li = document.createElement("li");
        const ago = Math.max(0, Math.round((Date.now() - t.at_ms) / 1000));
        li.textContent = t.state + " — " + fmt(ago) + " ago";
        if (t.reason) { const m = document.createElement("span"); m.className = "muted"; m.textContent = " (" + t.reason + ")"; li.appendChild(m); }
        return li;
      }));
    }
    const reason = document.getElementById("reason");
    reason.textContent = i.state_reason || ""; reason.hidden = !i.state_reason;
    const left = document.getElementById("time-left");
    if (left) left.textContent = done ? "—" : fmt(i.time_left_secs);
    const open = document.getElementById("open");
    if (open) open.hidden = done;
    if (open) {
      const ready = st === "running";
      open.setAttribute("aria-disabled", ready ? "false" : "true");
      if (ready) open.removeAttribute("tabindex"); else open.setAttribute("tabindex", "-1");
    }
    return st;
  }
  async function poll() {
    try {
      const r = await fetch(api, { headers: { "Accept": "application/json" } });
      if (r.ok) {
        const st = show(await r.json());
        if (terminal(st)) { const stop = document.getElementById("stop"); if (stop) stop.hidden = true; return; }
      }
    } catch (e) { /* the controller restarting: try again */ }
    setTimeout(poll, 1000);
  }
  poll();
  const open = document.getElementById("open");
  if (open) open.addEventListener("click", (e) => { if (open.getAttribute("aria-disabled") === "true") e.preventDefault(); });
  const logsBtn = document.getElementById("load-logs");
  if (logsBtn) logsBtn.addEventListener("click", async () => {
    const out = document.getElementById("logs");
    out.hidden = false; out.textContent = "Loading…";
    try {
      const r = await fetch(api + "/logs?tail=300");
      out.textContent = r.ok ? ((await r.text()) || "(no output yet)") : "Logs unavailable: " + (await r.json()).error.message;
    } catch (e) { out.textContent = "Logs unavailable: " + e; }
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_moves_the_bar_within_preparing() {
        use InstanceState::*;
        assert_eq!(progress_of(Preparing, None), 40);
        assert_eq!(progress_of(Preparing, Some("creating container")), 40);
        assert_eq!(progress_of(Preparing, Some("pulling")), 40);
        assert_eq!(progress_of(Preparing, Some("pulling 0%")), 25);
        assert_eq!(progress_of(Preparing, Some("pulling 50%")), 45);
        assert_eq!(progress_of(Preparing, Some("pulling 100%")), 65);
        assert!(progress_of(Preparing, Some("pulling 100%")) < progress(Starting));
        // Only while preparing.
        assert_eq!(progress_of(Failed, Some("pulling 50%")), 100);
    }
}
