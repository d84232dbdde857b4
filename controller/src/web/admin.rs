//! Admin pages: hosts with their capacity, every instance, blueprints (create, edit,
//! enable/disable, refresh the image, revision history) and users.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{badge, bar, count as plural, duration, message, mib, page};
use super::user::{app_name, instance_table};
use super::{failure, AdminSession};
use crate::service::{Kind, Service, ServiceError};
use cairn_api::blueprints::{
    BlueprintInput, BlueprintSpec, DatasetInput, DatasetVersionInput, Prepull, PrepullInput,
    PullPolicy, Strategy, VolumeInput,
};
use cairn_api::error::FieldError;
use cairn_api::users::Role;
use cairn_shared::resources::RuntimeFacts;

fn now() -> u64 {
    cairn_shared::time::now_ms()
}

/// `GET /admin/hosts`: state, capacity bars (reserved and used), labels, images,
/// instances.
pub async fn hosts(State(service): State<Arc<Service>>, AdminSession(s): AdminSession) -> Response {
    let (hosts, booked, scaler) = match (
        service.list_hosts(&s.caller),
        service.host_reservations(&s.caller),
        service.autoscaler(&s.caller),
    ) {
        (Ok(h), Ok(r), Ok(a)) => (h, r, a),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return failure(Some(&s.viewer), &e),
    };
    // Memory (bytes) and CPU (cores) reserved on each host, and its instances.
    let reserved: HashMap<String, (u64, f64, usize)> = booked
        .into_iter()
        .map(|(h, (r, n))| {
            (
                h.to_string(),
                (r.memory, r.millicpus as f64 / 1000.0, n as usize),
            )
        })
        .collect();
    let body = html! {
        @for (pool, health) in &scaler.providers {
            section class="card" aria-label={ "Pool " (pool) } {
                h2 { "Pool " (pool) " (" (health.provider) ")" }
                @if health.backoff_until_ms > now() {
                    p class="error" role="alert" { (plural(u64::from(health.failures_in_a_row), "failure", "failures"))
                        " in a row: no server is created for another "
                        (duration((health.backoff_until_ms - now()) / 1000)) "." }
                }
                @if let Some(e) = &health.last_error { p class="muted" { "Last failure: " (e) } }
                @let servers: Vec<_> = scaler.servers.iter().filter(|v| &v.pool == pool).collect();
                @if !servers.is_empty() {
                    table { thead { tr { th { "Server" } th { "Phase" } th { "Cloud status" } th { "Age" } } }
                        tbody { @for v in servers { tr {
                            td { (v.name) } td { (badge(&format!("{:?}", v.phase).to_lowercase())) }
                            td { (v.status) } td { (duration(now().saturating_sub(v.created_ms) / 1000)) }
                        } } } }
                }
            }
        }
        @if hosts.is_empty() {
            p { "No hosts have joined yet. Create a join token with "
                code { "cairn-controller token create" } " and run "
                code { "cairn-agent join" } " on a Docker host." }
        }
        div class="cards wide" {
            @for h in &hosts {
                @let (res_mem, res_cpu, count) = reserved.get(h.id.as_str()).copied().unwrap_or_default();
                article class="card" aria-labelledby={ "h-" (h.id) } {
                    h2 id={ "h-" (h.id) } { (h.hostname) }
                    p { code { (h.id) } " " (badge(h.state.as_str()))
                        @if !h.pool.open() { " " (badge(h.pool.standing.as_str())) } }
                    @if let Some(f) = &h.pool.last_failure { @if h.pool.consecutive_failures > 0 {
                        p class="muted" { (plural(h.pool.consecutive_failures, "launch", "launches")) " failed in a row; last: " (f) } } }
                    @if let Some(r) = &h.state_reason { p class="muted" { (r) } }
                    @match &h.isolation {
                        cairn_shared::resources::Isolation::Failed { error } => {
                            p class="error" role="alert" { "Not isolated: instances here could reach the host's services ("
                                (error) "). Only pools with allow_unisolated place instances here." }
                        }
                        cairn_shared::resources::Isolation::Pending => { p class="muted" { "Isolation not reported yet." } }
                        cairn_shared::resources::Isolation::Enforced => {}
                    }
                    @if let Some(c) = &h.capacity {
                        div class="bars" {
                        (bar("Reserved", res_mem, c.memory_total_bytes,
                            &format!("{} of {}", mib(res_mem), mib(c.memory_total_bytes))))
                        (bar("Memory used", c.memory_total_bytes - c.memory_available_bytes, c.memory_total_bytes,
                            &format!("{} free", mib(c.memory_available_bytes))))
                        (bar("CPU reserved", (res_cpu * 100.0) as u64, c.cpus as u64 * 100,
                            &format!("{res_cpu:.1} of {}", c.cpus)))
                        (bar("Load", (c.load_average[0] * 100.0) as u64, c.cpus as u64 * 100,
                            &format!("{:.2}", c.load_average[0])))
                        @if let Some(d) = &c.docker_disk {
                            (bar("Docker disk", d.total_bytes - d.free_bytes, d.total_bytes,
                                &format!("{} free", mib(d.free_bytes))))
                        }
                        }
                    } @else {
                        p class="muted" { "No report yet." }
                    }
                    ul class="facts" {
                        li { (plural(count as u64, "instance", "instances")) }
                        @match &h.runtime {
                            Some(RuntimeFacts::Docker(d)) => {
                                li { "Docker " (d.engine_version) }
                                li { (plural(d.image_count, "image", "images")) }
                            }
                            Some(RuntimeFacts::Unavailable { error }) => { li { "Docker unavailable: " (error) } }
                            None => {}
                        }
                        li { "seen " (duration(now().saturating_sub(h.last_seen_ms) / 1000)) " ago" }
                    }
                    @if !h.pulls.is_empty() {
                        section aria-label="Image pulls" {
                            h3 { "Pulling" }
                            ul class="pulls" { @for p in &h.pulls {
                                li { (pull_line(p)) }
                            } }
                        }
                    }
                    @if !h.labels.is_empty() {
                        ul class="facts" aria-label="Labels" {
                            @for (k, v) in &h.labels { li { code { (k) "=" (v) } } }
                        }
                    }
                    @if let Some(RuntimeFacts::Docker(d)) = &h.runtime {
                        details {
                            summary { "Images" }
                            ul { @for img in &d.images {
                                li { @if img.tags.is_empty() { code { (img.id.chars().take(19).collect::<String>()) } }
                                     @else { code { (img.tags.join(", ")) } }
                                     " " span class="muted" { (mib(img.size_bytes)) } }
                            } }
                        }
                    }
                }
            }
        }
    };
    page("Hosts", Some(&s.viewer), "/admin/hosts", body).into_response()
}

/// One pull as a line: what, how far (a progress bar), and how it goes.
fn pull_line(p: &cairn_shared::images::PullProgress) -> Markup {
    use cairn_shared::images::PullPhase;
    let pct = p.percent();
    html! {
        code { (p.reference) }
        @if p.prepull { " " span class="muted" { "(pre-pull)" } }
        " "
        @match &p.phase {
            PullPhase::Queued => { span { "queued" } }
            PullPhase::Pulling => {
                progress max="100" value=(pct) aria-label={ "pull of " (p.reference) } { (pct) "%" }
                " " (pct) "% · " (mib(p.bytes_done)) " of " (mib(p.bytes_total))
                " · " (p.layers_done) "/" (p.layers_total) " layers"
            }
            PullPhase::Loading => { span { "loading into Docker" } }
            PullPhase::Retrying { error, retry_in_ms } => {
                span class="warn" { "attempt " (p.attempt) " failed: " (error) "; retrying in "
                    (duration(retry_in_ms / 1000)) }
            }
            PullPhase::Failed { error } => { span class="error" { "failed: " (error) } }
        }
    }
}

/// `GET /admin/instances`: everyone's instances.
pub async fn instances(
    State(service): State<Arc<Service>>,
    AdminSession(s): AdminSession,
) -> Response {
    let list = match service.list_instances(&s.caller, true) {
        Ok(l) => l,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let body = html! {
        @if list.is_empty() { p { "No instances yet." } } @else { (instance_table(&list, true)) }
    };
    page("All instances", Some(&s.viewer), "/admin/instances", body).into_response()
}

/// `GET /admin/blueprints`.
pub async fn blueprints(
    State(service): State<Arc<Service>>,
    AdminSession(s): AdminSession,
) -> Response {
    let list = match service.list_blueprints(&s.caller) {
        Ok(l) => l,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let body = html! {
        p { a class="button" href="/admin/blueprints/new" { "New blueprint" } }
        div class="table-wrap" {
            table {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "App" } th scope="col" { "Image" }
                    th scope="col" { "Resources" } th scope="col" { "Lifetime" } th scope="col" { "Revision" }
                    th scope="col" { "Status" } th scope="col" { span class="muted" { "Actions" } }
                } }
                tbody {
                    @for b in &list {
                        tr {
                            td { a href={ "/admin/blueprints/" (b.spec.name) } { (b.spec.name) } }
                            td { (app_name(b.spec.app)) }
                            td { code { (b.spec.image) }
                                @for d in &b.spec.datasets {
                                    br; span class="muted" { "dataset " } code { (d.to_string()) }
                                }
                            }
                            td { (b.spec.memory_mib) " MiB, " (b.spec.cpus) " CPU" }
                            td { (duration(b.spec.max_lifetime_secs)) }
                            td { (b.revision) }
                            td { @if b.spec.enabled { (badge("enabled")) } @else { (badge("disabled")) } }
                            td { (enable_form(&s.viewer.csrf, &b.spec.name, b.spec.enabled)) }
                        }
                    }
                }
            }
        }
    };
    page("Blueprints", Some(&s.viewer), "/admin/blueprints", body).into_response()
}

fn enable_form(csrf: &str, name: &str, enabled: bool) -> Markup {
    html! {
        form method="post" action={ "/admin/blueprints/" (name) "/enabled" } {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="enabled" value=(if enabled { "false" } else { "true" });
            button type="submit" class="secondary" {
                @if enabled { "Disable" } @else { "Enable" }
                span class="skip-label" hidden { " " (name) }
            }
        }
    }
}

/// The blueprint form's fields, as text, so a bad number comes back as typed.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct BlueprintForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    app_port: String,
    #[serde(default)]
    memory_mib: String,
    #[serde(default)]
    cpus: String,
    #[serde(default)]
    lifetime_hours: String,
    #[serde(default)]
    max_instances_per_user: String,
    /// Launch-queue priority, -100 to 100; empty means the default (0).
    #[serde(default)]
    priority: String,
    #[serde(default)]
    placement: String,
    #[serde(default)]
    strategy: String,
    /// `registry` or `never`; empty means the default (`registry`).
    #[serde(default)]
    pull: String,
    /// `all`, `none` or a number of hosts; empty means the default (`all`).
    #[serde(default)]
    prepull: String,
    /// `NAME[@VERSION] PATH`, one per line; no version means the latest.
    #[serde(default)]
    datasets: String,
    /// `PATH [MINUTES] [UID:GID]`: the persistent mount, its checkpoint period and
    /// its owner; empty keeps no files.
    #[serde(default)]
    volume: String,
    /// The owning group; empty is the default group.
    #[serde(default)]
    group: String,
    /// Credits an hour; empty is 1.
    #[serde(default)]
    cost: String,
    /// Minutes idle before an instance is stopped; empty takes the group's.
    #[serde(default)]
    idle_minutes: String,
    #[serde(default)]
    enabled: Option<String>,
    /// Set by the "Refresh image" button: resolve the tag again instead of saving.
    #[serde(default)]
    refresh: Option<String>,
}

impl BlueprintForm {
    fn from_spec(b: &BlueprintSpec) -> Self {
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        BlueprintForm {
            csrf: String::new(),
            name: b.name.clone(),
            description: b.description.clone(),
            image: b.image.clone(),
            command: b.command.clone().unwrap_or_default().join("\n"),
            env: pairs(&b.env),
            app: serde_json::to_value(b.app)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            app_port: b.app_port.to_string(),
            memory_mib: b.memory_mib.to_string(),
            cpus: b.cpus.to_string(),
            lifetime_hours: format!("{}", b.max_lifetime_secs as f64 / 3600.0),
            max_instances_per_user: b.max_instances_per_user.to_string(),
            priority: b.priority.to_string(),
            placement: pairs(&b.placement),
            strategy: match b.strategy {
                Some(Strategy::Binpack) => "binpack".into(),
                Some(Strategy::Spread) => "spread".into(),
                None => String::new(),
            },
            pull: match b.pull {
                PullPolicy::Registry => "registry".into(),
                PullPolicy::Never => "never".into(),
            },
            prepull: match b.prepull {
                Prepull::All => "all".into(),
                Prepull::None => "none".into(),
                Prepull::Hosts(n) => n.to_string(),
            },
            datasets: b
                .datasets
                .iter()
                .map(|d| format!("{} {}", d.reference(), d.path))
                .collect::<Vec<_>>()
                .join("\n"),
            volume: b
                .volume
                .as_ref()
                .map(|v| {
                    let mut s = format!("{} {}", v.path, f64::from(v.checkpoint_secs) / 60.0);
                    if let Some((u, g)) = v.owner {
                        s.push_str(&format!(" {u}:{g}"));
                    }
                    s
                })
                .unwrap_or_default(),
            group: b.group.clone().unwrap_or_default(),
            cost: b.cost.to_string(),
            idle_minutes: b
                .idle_timeout_secs
                .map(|s| format!("{}", s as f64 / 60.0))
                .unwrap_or_default(),
            enabled: b.enabled.then(|| "on".into()),
            refresh: None,
        }
    }

    /// The API input, or field errors for what does not even parse.
    fn input(&self) -> Result<BlueprintInput, Vec<FieldError>> {
        let mut errors = vec![];
        let mut bad = |field: &str, message: &str| {
            errors.push(FieldError {
                field: field.into(),
                message: message.into(),
            })
        };
        let int = |s: &str| s.trim().parse::<i64>().ok();
        let pairs = |s: &str, field: &str, bad: &mut dyn FnMut(&str, &str)| {
            let mut m = BTreeMap::new();
            for line in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
                match line.split_once('=') {
                    Some((k, v)) => {
                        m.insert(k.trim().to_string(), v.to_string());
                    }
                    None => bad(field, &format!("{line:?} is not KEY=VALUE")),
                }
            }
            m
        };
        let env = pairs(&self.env, "env", &mut bad);
        let placement = pairs(&self.placement, "placement", &mut bad);
        let opt_int = |s: &str, field: &str, bad: &mut dyn FnMut(&str, &str)| {
            if s.trim().is_empty() {
                None
            } else {
                let v = int(s);
                if v.is_none() {
                    bad(field, "must be a whole number");
                }
                v
            }
        };
        let app_port = opt_int(&self.app_port, "app_port", &mut bad);
        let memory_mib = opt_int(&self.memory_mib, "memory_mib", &mut bad);
        let max_instances_per_user = opt_int(
            &self.max_instances_per_user,
            "max_instances_per_user",
            &mut bad,
        );
        let priority = opt_int(&self.priority, "priority", &mut bad);
        let cpus = if self.cpus.trim().is_empty() {
            None
        } else {
            let v = self.cpus.trim().parse::<f64>().ok();
            if v.is_none() {
                bad("cpus", "must be a number");
            }
            v
        };
        let lifetime = if self.lifetime_hours.trim().is_empty() {
            None
        } else {
            match self.lifetime_hours.trim().parse::<f64>() {
                Ok(h) if h.is_finite() => Some((h * 3600.0).round() as i64),
                _ => {
                    bad("max_lifetime_secs", "must be a number of hours");
                    None
                }
            }
        };
        // `PATH [MINUTES] [UID:GID]`; the rules are validation's.
        let volume = {
            let words: Vec<&str> = self.volume.split_whitespace().collect();
            match words.as_slice() {
                [] => None,
                [path, rest @ ..] if rest.len() <= 2 => {
                    let minutes = match rest.first() {
                        None => None,
                        Some(m) => match m.parse::<f64>() {
                            Ok(n) => Some(n),
                            Err(_) => {
                                bad("volume", &format!("{m:?} is not a number of minutes"));
                                None
                            }
                        },
                    };
                    Some(VolumeInput {
                        path: Some(path.to_string()),
                        checkpoint_minutes: minutes,
                        owner: rest.get(1).map(|o| o.to_string()),
                    })
                }
                _ => {
                    bad(
                        "volume",
                        "write PATH [MINUTES] [UID:GID], e.g. /home/jovyan/work 5 1000:100",
                    );
                    None
                }
            }
        };
        // `NAME[@VERSION] PATH` per line; the version and path rules are validation's.
        let mut datasets = vec![];
        for line in self
            .datasets
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(dataset), Some(path), None) => {
                    let (name, version) = match dataset.split_once('@') {
                        Some((n, v)) => (n, Some(DatasetVersionInput::Word(v.to_string()))),
                        None => (dataset, None),
                    };
                    datasets.push(DatasetInput {
                        name: Some(name.to_string()),
                        version,
                        path: Some(path.to_string()),
                    });
                }
                _ => bad(
                    "datasets",
                    &format!(
                        "{line:?} is not NAME[@VERSION] PATH, e.g. course-data@latest /data/course"
                    ),
                ),
            }
        }
        let command: Vec<String> = self
            .command
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let cost = match self.cost.trim() {
            "" => None,
            c => match c.parse::<f64>() {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push(FieldError {
                        field: "cost".into(),
                        message: "a number of credits an hour, e.g. 1 or 0.5".into(),
                    });
                    None
                }
            },
        };
        let idle_timeout_secs = match self.idle_minutes.trim() {
            "" => None,
            m => match m.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Some((v * 60.0).round() as i64),
                _ => {
                    errors.push(FieldError {
                        field: "idle_timeout_secs".into(),
                        message: "a number of minutes, 0 for never".into(),
                    });
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Ok(BlueprintInput {
            group: text(&self.group),
            cost,
            idle_timeout_secs,
            name: text(&self.name),
            description: Some(self.description.trim().to_string()),
            image: text(&self.image),
            command: (!command.is_empty()).then_some(command),
            env: Some(env),
            app: text(&self.app),
            app_port,
            memory_mib,
            cpus,
            max_lifetime_secs: lifetime,
            max_instances_per_user,
            priority,
            placement: Some(placement),
            strategy: text(&self.strategy),
            pull: text(&self.pull),
            // A number is a host count; anything else goes to validation as a word,
            // which names the accepted values if it is wrong.
            prepull: text(&self.prepull).map(|p| match p.parse::<i64>() {
                Ok(n) => PrepullInput::Hosts(n),
                Err(_) => PrepullInput::Word(p),
            }),
            datasets: Some(datasets),
            volume,
            enabled: Some(self.enabled.is_some()),
        })
    }
}

fn field_error(errors: &[FieldError], field: &str) -> Option<String> {
    let msgs: Vec<&str> = errors
        .iter()
        .filter(|e| {
            e.field == field
                || e.field.starts_with(&format!("{field}."))
                || e.field.starts_with(&format!("{field}["))
        })
        .map(|e| e.message.as_str())
        .collect();
    (!msgs.is_empty()).then(|| msgs.join("; "))
}

/// One labelled input with its hint and error, wired for screen readers.
fn field(name: &str, label: &str, hint: &str, input: Markup, errors: &[FieldError]) -> Markup {
    let err = field_error(errors, name);
    html! {
        div {
            label for=(name) { (label) @if !hint.is_empty() { " " span class="hint" id={ (name) "-hint" } { (hint) } } }
            (input)
            @if let Some(e) = err { p class="field-error" id={ (name) "-error" } { (e) } }
        }
    }
}

fn blueprint_form(
    action: &str,
    csrf: &str,
    f: &BlueprintForm,
    errors: &[FieldError],
    new: bool,
) -> Markup {
    let invalid = |n: &str| field_error(errors, n).map(|_| "true");
    let text = |n: &str, v: &str, required: bool| {
        html! { input id=(n) name=(n) value=(v) required[required] aria-invalid=[invalid(n)]
        aria-describedby={ (n) "-hint " (n) "-error" }; }
    };
    let apps = [
        ("jupyter", "JupyterLab"),
        ("rstudio", "RStudio"),
        ("http", "Web app (HTTP)"),
    ];
    html! {
        @if !errors.is_empty() { (message("error", "Please correct the fields marked below.")) }
        form class="fields" method="post" action=(action) novalidate {
            input type="hidden" name="csrf" value=(csrf);
            @if new {
                (field("name", "Name", "lower-case letters, digits and '-'", text("name", &f.name, true), errors))
            } @else {
                input type="hidden" name="name" value=(f.name);
            }
            (field("description", "Description", "", html! {
                textarea id="description" name="description" rows="2" { (f.description) } }, errors))
            (field("image", "Image", "e.g. registry.example.org/jupyter:2025", text("image", &f.image, true), errors))
            (field("app", "App", "", html! {
                select id="app" name="app" aria-invalid=[invalid("app")] {
                    @for (v, l) in apps { option value=(v) selected[f.app == v] { (l) } }
                } }, errors))
            (field("app_port", "App port", "where the app listens in the container", text("app_port", &f.app_port, true), errors))
            (field("memory_mib", "Memory (MiB)", "", text("memory_mib", &f.memory_mib, true), errors))
            (field("cpus", "CPUs", "may be fractional, e.g. 0.5", text("cpus", &f.cpus, true), errors))
            (field("max_lifetime_secs", "Maximum lifetime (hours)", "", html! {
                input id="max_lifetime_secs" name="lifetime_hours" value=(f.lifetime_hours) aria-invalid=[invalid("max_lifetime_secs")]; }, errors))
            (field("max_instances_per_user", "Instances per user", "", text("max_instances_per_user", &f.max_instances_per_user, false), errors))
            (field("priority", "Queue priority", "-100 to 100, default 0: when hosts are full, higher launches go first; running instances are never stopped for them", text("priority", &f.priority, false), errors))
            (field("command", "Command", "one argument per line; empty keeps the image's", html! {
                textarea id="command" name="command" rows="3" { (f.command) } }, errors))
            (field("env", "Environment", "KEY=VALUE, one per line", html! {
                textarea id="env" name="env" rows="3" aria-invalid=[invalid("env")] { (f.env) } }, errors))
            (field("placement", "Placement labels", "KEY=VALUE, one per line; hosts must have all", html! {
                textarea id="placement" name="placement" rows="2" aria-invalid=[invalid("placement")] { (f.placement) } }, errors))
            (field("strategy", "Placement", "", html! {
                select id="strategy" name="strategy" aria-invalid=[invalid("strategy")] {
                    option value="" selected[f.strategy.is_empty()] { "The pool's choice" }
                    option value="binpack" selected[f.strategy == "binpack"] { "Pack hosts full (frees idle hosts)" }
                    option value="spread" selected[f.strategy == "spread"] { "Spread over hosts" }
                } }, errors))
            (field("pull", "Image source", "the tag is resolved to a digest when saved", html! {
                select id="pull" name="pull" aria-invalid=[invalid("pull")] aria-describedby="pull-hint pull-error" {
                    option value="registry" selected[f.pull != "never"] { "Registry or uploaded image (pulled by digest)" }
                    option value="never" selected[f.pull == "never"] { "Never pull: already on every host" }
                } }, errors))
            (field("prepull", "Pre-pull", "all, none, or a number of hosts", text("prepull", &f.prepull, false), errors))
            (field("datasets", "Datasets", "NAME[@VERSION] PATH, one per line, mounted read-only; no version means the latest at each launch (pre-fetched like the image)", html! {
                textarea id="datasets" name="datasets" rows="2" aria-invalid=[invalid("datasets")] aria-describedby="datasets-hint datasets-error" { (f.datasets) } }, errors))
            (field("volume", "Persistent files", "PATH [MINUTES] [UID:GID]: each user's files there are kept between instances, saved every MINUTES (default 5) and at stop; empty keeps nothing", text("volume", &f.volume, false), errors))
            (field("group", "Group", "the group whose members launch it and whose managers edit it; empty is everyone", text("group", &f.group, false), errors))
            (field("cost", "Cost", "credits an hour of running costs (default 1)", text("cost", &f.cost, false), errors))
            (field("idle_timeout_secs", "Idle timeout (minutes)", "stop instances nobody used for this long; empty takes the group's, 0 never", html! {
                input id="idle_timeout_secs" name="idle_minutes" value=(f.idle_minutes) aria-invalid=[invalid("idle_timeout_secs")]; }, errors))
            div class="row" {
                input id="enabled" name="enabled" type="checkbox" checked[f.enabled.is_some()];
                label for="enabled" { "Enabled (users can launch it)" }
            }
            div { button type="submit" { @if new { "Create blueprint" } @else { "Save as a new revision" } } }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct NewQuery {
    /// The group the new blueprint is for (from a group's page).
    #[serde(default)]
    group: Option<String>,
}

/// `GET /admin/blueprints/new`: for admins, and for group managers (the service
/// checks what they save against their group's limits).
pub async fn new_blueprint(s: super::Session, Query(q): Query<NewQuery>) -> Response {
    let f = BlueprintForm {
        app: "jupyter".into(),
        app_port: "8888".into(),
        memory_mib: "1024".into(),
        cpus: "1".into(),
        lifetime_hours: "1".into(),
        max_instances_per_user: "1".into(),
        priority: "0".into(),
        enabled: Some("on".into()),
        group: q.group.unwrap_or_default(),
        ..Default::default()
    };
    let body = blueprint_form("/admin/blueprints/new", &s.viewer.csrf, &f, &[], true);
    page("New blueprint", Some(&s.viewer), "/admin/blueprints", body).into_response()
}

/// `POST /admin/blueprints/new`.
pub async fn create_blueprint(
    State(service): State<Arc<Service>>,
    s: super::Session,
    Form(f): Form<BlueprintForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    let again = |errors: Vec<FieldError>| {
        let body = blueprint_form("/admin/blueprints/new", &s.viewer.csrf, &f, &errors, true);
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            page("New blueprint", Some(&s.viewer), "/admin/blueprints", body),
        )
            .into_response()
    };
    let input = f.input().map_err(again)?;
    match service.create_blueprint(&s.caller, &input).await {
        Ok(b) => Ok(Redirect::to(&format!("/admin/blueprints/{}", b.spec.name)).into_response()),
        Err(e) => Err(match form_errors(&e) {
            Some(errors) => again(errors),
            None => failure(Some(&s.viewer), &e),
        }),
    }
}

/// A failed save as field errors beside the form, where it is about the input.
fn form_errors(e: &ServiceError) -> Option<Vec<FieldError>> {
    match e.kind {
        Kind::Invalid if !e.fields.is_empty() => Some(e.fields.clone()),
        Kind::Conflict if e.code == "already_exists" => Some(vec![FieldError {
            field: "name".into(),
            message: e.message.clone(),
        }]),
        _ => None,
    }
}

/// What the last "Refresh image" did, shown once on the page it redirects to.
#[derive(Debug, Default, Deserialize)]
pub struct EditQuery {
    #[serde(default)]
    refreshed: Option<String>,
}

fn edit_page(
    service: &Service,
    s: &super::Session,
    name: &str,
    f: Option<&BlueprintForm>,
    errors: &[FieldError],
    notice: Option<Markup>,
    status: StatusCode,
) -> Response {
    let (record, revisions) = match (
        service.blueprint(&s.caller, name),
        service.blueprint_revisions(&s.caller, name),
    ) {
        (Ok(r), Ok(revs)) => (r, revs),
        (Err(e), _) | (_, Err(e)) => return failure(Some(&s.viewer), &e),
    };
    let form = f
        .cloned()
        .unwrap_or_else(|| BlueprintForm::from_spec(&record.spec));
    let resolved = record.spec.resolved.as_ref();
    let body = html! {
        @if let Some(n) = notice { (n) }
        section class="image" aria-labelledby="image-h" {
            h2 id="image-h" { "Image" }
            p {
                "Instances of revision " (record.revision) " run " code { (record.spec.run_image()) }
                @match resolved.map(|r| &r.source) {
                    Some(cairn_shared::images::ImageSource::Registry) => {
                        ", resolved from " code { (record.spec.image) } " "
                        (duration(now().saturating_sub(resolved.map_or(0, |r| r.resolved_ms)) / 1000)) " ago."
                    }
                    Some(cairn_shared::images::ImageSource::Controller { .. }) => {
                        ", the image uploaded to the controller as " code { (record.spec.image) } "."
                    }
                    Some(cairn_shared::images::ImageSource::Host) => ", as it is on each host (never pulled)."
                    None => " by tag (not resolved yet; refresh to pin a digest)."
                }
            }
            form method="post" action={ "/admin/blueprints/" (name) } {
                input type="hidden" name="csrf" value=(s.viewer.csrf);
                input type="hidden" name="refresh" value="1";
                button type="submit" class="secondary" { "Refresh image" }
                " " span class="hint" { "resolves the tag again; a new digest makes a new revision, running instances keep theirs" }
            }
        }
        section class="availability" aria-labelledby="avail-h" {
            h2 id="avail-h" { "Availability" }
            p { "Revision " strong { (record.revision) } " is " @if record.spec.enabled { (badge("enabled")) ": users can launch it." } @else { (badge("disabled")) ": users cannot launch it; running instances are not affected." } }
            (enable_form(&s.viewer.csrf, name, record.spec.enabled))
        }
        h2 { "Edit" }
        (blueprint_form(&format!("/admin/blueprints/{name}"), &s.viewer.csrf, &form, errors, false))
        section aria-labelledby="rev-h" {
            h2 id="rev-h" { "Revision history" }
            div class="table-wrap" {
                table {
                    thead { tr { th scope="col" { "Revision" } th scope="col" { "Saved" } th scope="col" { "Image" }
                        th scope="col" { "Resources" } th scope="col" { "Enabled" } } }
                    tbody {
                        @for r in revisions.iter().rev() {
                            tr {
                                td { (r.revision) }
                                td { (duration(now().saturating_sub(r.saved_ms) / 1000)) " ago" }
                                td {
                                    code { (r.spec.image) }
                                    @if r.spec.run_image() != r.spec.image {
                                        br; span class="muted" { code { (r.spec.run_image()) } }
                                    }
                                }
                                td { (r.spec.memory_mib) " MiB, " (r.spec.cpus) " CPU, " (duration(r.spec.max_lifetime_secs)) }
                                td { @if r.spec.enabled { "yes" } @else { "no" } }
                            }
                        }
                    }
                }
            }
        }
    };
    (
        status,
        page(
            &format!("Blueprint {name}"),
            Some(&s.viewer),
            "/admin/blueprints",
            body,
        ),
    )
        .into_response()
}

/// `GET /admin/blueprints/{name}`: the edit form and the revision history.
pub async fn edit_blueprint(
    State(service): State<Arc<Service>>,
    s: super::Session,
    Path(name): Path<String>,
    Query(q): Query<EditQuery>,
) -> Response {
    let notice = match q.refreshed.as_deref() {
        Some("changed") => Some(message(
            "notice",
            "The tag points at a new image: saved as a new revision. Running instances keep theirs.",
        )),
        Some("unchanged") => Some(message(
            "notice",
            "The tag still points at the same image; nothing changed.",
        )),
        _ => None,
    };
    edit_page(&service, &s, &name, None, &[], notice, StatusCode::OK)
}

/// The "Refresh image" button: the same operation as
/// `POST /api/v1/blueprints/{name}/refresh`.
async fn refresh_blueprint(
    service: &Service,
    s: &super::Session,
    name: &str,
) -> Result<Response, Response> {
    match service.refresh_blueprint(&s.caller, name).await {
        Ok(r) => {
            let what = if r.changed { "changed" } else { "unchanged" };
            Ok(Redirect::to(&format!("/admin/blueprints/{name}?refreshed={what}")).into_response())
        }
        Err(e) if e.kind == Kind::Invalid => {
            let text = e
                .fields
                .iter()
                .map(|f| f.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            Err(edit_page(
                service,
                s,
                name,
                None,
                &[],
                Some(message(
                    "error",
                    &format!("Cannot refresh the image: {text}"),
                )),
                StatusCode::UNPROCESSABLE_ENTITY,
            ))
        }
        Err(e) => Err(failure(Some(&s.viewer), &e)),
    }
}

/// `POST /admin/blueprints/{name}`: a new revision, or with `refresh` set (the
/// "Refresh image" button) the image resolved again.
pub async fn save_blueprint(
    State(service): State<Arc<Service>>,
    s: super::Session,
    Path(name): Path<String>,
    Form(f): Form<BlueprintForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    if f.refresh.is_some() {
        return refresh_blueprint(&service, &s, &name).await;
    }
    let again = |errors: &[FieldError]| {
        edit_page(
            &service,
            &s,
            &name,
            Some(&f),
            errors,
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
    };
    let input = f.input().map_err(|errors| again(&errors))?;
    match service.update_blueprint(&s.caller, &name, &input).await {
        Ok(_) => Ok(Redirect::to(&format!("/admin/blueprints/{name}")).into_response()),
        Err(e) => Err(match form_errors(&e) {
            Some(errors) => again(&errors),
            None => failure(Some(&s.viewer), &e),
        }),
    }
}

#[derive(Debug, Deserialize)]
pub struct EnabledForm {
    #[serde(default)]
    csrf: String,
    enabled: bool,
}

/// `POST /admin/blueprints/{name}/enabled`.
pub async fn set_blueprint_enabled(
    State(service): State<Arc<Service>>,
    s: super::Session,
    Path(name): Path<String>,
    Form(f): Form<EnabledForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    service
        .set_blueprint_enabled(&s.caller, &name, f.enabled)
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to("/admin/blueprints").into_response())
}

/// `GET /admin/users`.
pub async fn users(State(service): State<Arc<Service>>, AdminSession(s): AdminSession) -> Response {
    users_page(&service, &s, StatusCode::OK, None, None)
}

fn users_page(
    service: &Service,
    s: &super::Session,
    status: StatusCode,
    error: Option<&str>,
    notice: Option<&str>,
) -> Response {
    let list = match service.list_users(&s.caller) {
        Ok(l) => l,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let me = s.caller.principal().and_then(|p| p.user.clone());
    let body = html! {
        @if let Some(e) = error { (message("error", e)) }
        @if let Some(n) = notice { (message("notice", n)) }
        div class="table-wrap" {
            table {
                thead { tr { th scope="col" { "User" } th scope="col" { "Role" } th scope="col" { "Status" }
                    th scope="col" { "Created" } th scope="col" { span class="muted" { "Actions" } } } }
                tbody {
                    @for u in &list {
                        tr {
                            td { (u.name) }
                            td { @if u.role == Role::Admin { "admin" } @else { "user" } }
                            td {
                                @if u.disabled { (badge("disabled")) }
                                @else if u.pending { a href="/registrations" { (badge("pending")) } }
                                @else if u.expires_ms.is_some_and(|e| e <= now()) { (badge("expired")) }
                                @else { (badge("active")) }
                                @if let Some(d) = u.delete_after_ms { " " span class="muted" { "deleted in " (duration(d.saturating_sub(now()) / 1000)) } }
                            }
                            td { (duration(now().saturating_sub(u.created_ms) / 1000)) " ago" }
                            td {
                                @if me.as_deref() != Some(u.name.as_str()) {
                                form method="post" action={ "/admin/users/" (u.name) "/disabled" } {
                                    input type="hidden" name="csrf" value=(s.viewer.csrf);
                                    input type="hidden" name="disabled" value=(if u.disabled { "false" } else { "true" });
                                    button type="submit" class="secondary" {
                                        @if u.disabled { "Enable" } @else { "Disable" }
                                    }
                                }
                                } @else { span class="muted" { "you" } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Add a user" }
        form class="fields" method="post" action="/admin/users" {
            input type="hidden" name="csrf" value=(s.viewer.csrf);
            div { label for="new-name" { "User name" } input id="new-name" name="name" required autocomplete="off"; }
            div { label for="new-password" { "Initial password " span class="hint" { "at least 8 characters" } }
                  input id="new-password" name="password" type="password" required autocomplete="new-password"; }
            div { label for="new-role" { "Role" }
                  select id="new-role" name="role" { option value="user" selected { "user" } option value="admin" { "admin" } } }
            div { button type="submit" { "Add user" } }
        }
    };
    (status, page("Users", Some(&s.viewer), "/admin/users", body)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct NewUserForm {
    #[serde(default)]
    csrf: String,
    name: String,
    password: String,
    role: String,
}

/// `POST /admin/users`.
pub async fn create_user(
    State(service): State<Arc<Service>>,
    AdminSession(s): AdminSession,
    Form(f): Form<NewUserForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    let role = match f.role.as_str() {
        "admin" => Role::Admin,
        "user" => Role::User,
        _ => {
            return Err(users_page(
                &service,
                &s,
                StatusCode::BAD_REQUEST,
                Some("Role must be user or admin."),
                None,
            ))
        }
    };
    match service
        .create_user(&s.caller, &f.name, &f.password, role)
        .await
    {
        Ok(u) => Ok(users_page(
            &service,
            &s,
            StatusCode::OK,
            None,
            Some(&format!("Added {}.", u.name)),
        )),
        Err(e) if matches!(e.kind, Kind::Invalid | Kind::Conflict) => Err(users_page(
            &service,
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&e.message),
            None,
        )),
        Err(e) => Err(failure(Some(&s.viewer), &e)),
    }
}

#[derive(Debug, Deserialize)]
pub struct DisabledForm {
    #[serde(default)]
    csrf: String,
    disabled: bool,
}

/// `POST /admin/users/{name}/disabled`.
pub async fn set_user_disabled(
    State(service): State<Arc<Service>>,
    AdminSession(s): AdminSession,
    Path(name): Path<String>,
    Form(f): Form<DisabledForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    match service
        .set_user_disabled(&s.caller, &name, f.disabled)
        .await
    {
        Ok(_) => Ok(Redirect::to("/admin/users").into_response()),
        Err(e) if e.kind == Kind::Conflict => Err(users_page(
            &service,
            &s,
            StatusCode::CONFLICT,
            Some(&e.message),
            None,
        )),
        Err(e) => Err(failure(Some(&s.viewer), &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blueprint_form_parses_lines_and_reports_what_does_not() {
        let f = BlueprintForm {
            name: "py".into(),
            image: "img:1".into(),
            app: "http".into(),
            app_port: "80".into(),
            memory_mib: "256".into(),
            cpus: "0.5".into(),
            lifetime_hours: "1.5".into(),
            command: "httpd\n-f\n\n".into(),
            env: "A=1\nB=x=y\n".into(),
            enabled: Some("on".into()),
            ..Default::default()
        };
        let input = f.input().unwrap();
        assert_eq!(input.max_lifetime_secs, Some(5400));
        assert_eq!(input.command, Some(vec!["httpd".into(), "-f".into()]));
        assert_eq!(input.env.unwrap()["B"], "x=y");
        assert_eq!(input.enabled, Some(true));

        assert_eq!(input.priority, None, "empty: the default");

        let bad = BlueprintForm {
            memory_mib: "lots".into(),
            env: "NOEQUALS".into(),
            priority: "high".into(),
            ..f
        };
        let errors = bad.input().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["env", "memory_mib", "priority"]);
    }

    #[test]
    fn a_spec_round_trips_through_the_form() {
        let input = BlueprintForm {
            name: "py".into(),
            description: "Python".into(),
            image: "img:1".into(),
            app: "jupyter".into(),
            app_port: "8888".into(),
            memory_mib: "512".into(),
            cpus: "1".into(),
            lifetime_hours: "2".into(),
            max_instances_per_user: "1".into(),
            priority: "-20".into(),
            placement: "zone=a".into(),
            datasets: "course-data /data/course\n  shared@3   /data/shared  ".into(),
            volume: "/home/jovyan/work 10 1000:100".into(),
            enabled: Some("on".into()),
            ..Default::default()
        }
        .input()
        .unwrap();
        let spec = crate::blueprints::spec::validate(&input).unwrap();
        assert_eq!(spec.priority, -20);
        assert_eq!(
            spec.volume,
            Some(crate::blueprints::spec::BlueprintVolume {
                path: "/home/jovyan/work".into(),
                checkpoint_secs: 600,
                owner: Some((1000, 100)),
            })
        );
        assert_eq!(
            spec.datasets
                .iter()
                .map(|d| (d.name.as_str(), d.version, d.path.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("course-data", None, "/data/course"),
                ("shared", Some(3), "/data/shared")
            ]
        );
        let again = BlueprintForm::from_spec(&spec).input().unwrap();
        assert_eq!(crate::blueprints::spec::validate(&again).unwrap(), spec);
    }
}
