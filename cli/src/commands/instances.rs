//! `launch`, `ps`, `stop` and `logs`: a user's instances.
//!
//! `launch --wait` polls the instance every 500 ms and prints each state it passes
//! through (from the instance's `transitions`, so a state that came and went between
//! two polls is shown too) until it is `running` or has failed.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::Ctx;
use crate::client::{parse, Client};
use crate::error::Error;
use crate::model::Instance;
use crate::output::{self, Table};

/// How often `launch --wait` asks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

pub async fn launch(ctx: &Ctx, blueprint: &str, wait: Option<Duration>) -> Result<(), Error> {
    let v = ctx
        .client
        .post(&["instances"], Some(&launch_body(blueprint)))
        .await?;
    let inst: Instance = parse(&v, "the new instance")?;
    let Some(timeout) = wait else {
        return ctx.emit(&v, || {
            let mut s = state_line(&inst.id, &inst.state, None);
            if inst.state == "running" {
                s.push_str(&render_access(&inst, &ctx.client));
            }
            Ok(s)
        });
    };

    // Progress is the result in human mode; with --json it goes to stderr so stdout
    // holds only the final JSON.
    let progress = |lines: Vec<String>| -> Result<(), Error> {
        for l in lines {
            if ctx.json {
                output::note(l.trim_end());
            } else {
                output::print(&l)?;
            }
        }
        Ok(())
    };
    let (mut tracker, first) = Progress::start(&inst);
    progress(first)?;
    let deadline = Instant::now() + timeout;
    let (mut v, mut inst) = (v, inst);
    loop {
        match outcome(&inst) {
            Outcome::Running => break,
            Outcome::Failed(e) => {
                if ctx.json {
                    output::print(&output::json(&v))?;
                }
                return Err(e);
            }
            Outcome::Pending => {}
        }
        if Instant::now() >= deadline {
            return Err(Error::WaitTimeout {
                id: inst.id.clone(),
                state: inst.state.clone(),
                waited: humantime::format_duration(timeout).to_string(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        v = ctx.client.get(&["instances", &inst.id]).await?;
        inst = parse(&v, "the instance")?;
        progress(tracker.update(&inst))?;
    }
    ctx.emit(&v, || Ok(render_access(&inst, &ctx.client)))
}

pub async fn ps(ctx: &Ctx, all: bool) -> Result<(), Error> {
    let query = if all {
        vec![("all", "true".to_string())]
    } else {
        vec![]
    };
    let v = ctx
        .client
        .json(Method::GET, &["instances"], &query, None)
        .await?;
    ctx.emit(&v, || {
        let list: Vec<Instance> = parse(&v, "the instance list")?;
        Ok(render_ps(&list, all, output::now_ms()))
    })
}

pub async fn stop(ctx: &Ctx, id: &str) -> Result<(), Error> {
    let v = ctx
        .client
        .json(Method::DELETE, &["instances", id], &[], None)
        .await?;
    ctx.emit(&v, || {
        let inst: Instance = parse(&v, "the instance")?;
        Ok(state_line(&inst.id, &inst.state, None))
    })
}

pub async fn logs(ctx: &Ctx, id: &str, tail: Option<u32>) -> Result<(), Error> {
    let query: Vec<(&str, String)> = tail.map(|n| ("tail", n.to_string())).into_iter().collect();
    let body = ctx.client.bytes(&["instances", id, "logs"], &query).await?;
    output::print_bytes(&body)
}

/// `i-0123456789abcdef preparing: pulling the image`.
pub fn state_line(id: &str, state: &str, reason: Option<&str>) -> String {
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => format!(
            "{} {}: {}\n",
            output::clean(id),
            output::clean(state),
            output::clean(r)
        ),
        None => format!("{} {}\n", output::clean(id), output::clean(state)),
    }
}

/// Where waiting stands.
#[derive(Debug)]
pub enum Outcome {
    Running,
    Pending,
    Failed(Error),
}

/// Whether an instance being waited for has arrived, is on its way, or never will.
pub fn outcome(i: &Instance) -> Outcome {
    match i.state.as_str() {
        "running" => Outcome::Running,
        "failed" | "stopping" | "stopped" => Outcome::Failed(Error::InstanceFailed {
            id: i.id.clone(),
            state: i.state.clone(),
            reason: reason(i).unwrap_or_else(|| "no reason given".into()),
        }),
        _ => Outcome::Pending,
    }
}

/// The instance's reason for its current state.
fn reason(i: &Instance) -> Option<String> {
    i.state_reason
        .clone()
        .or_else(|| {
            i.transitions
                .last()
                .filter(|t| t.state == i.state)
                .and_then(|t| t.reason.clone())
        })
        .filter(|r| !r.trim().is_empty())
}

/// Which states of an instance have been shown while waiting.
#[derive(Debug, Clone)]
pub struct Progress {
    seen_transitions: usize,
    last_state: String,
}

impl Progress {
    /// Starts from a freshly launched instance; returns the line for its state.
    pub fn start(i: &Instance) -> (Self, Vec<String>) {
        let p = Progress {
            seen_transitions: i.transitions.len(),
            last_state: i.state.clone(),
        };
        (p, vec![state_line(&i.id, &i.state, reason(i).as_deref())])
    }

    /// The lines for what happened since the last look.
    pub fn update(&mut self, i: &Instance) -> Vec<String> {
        let mut lines = vec![];
        // A server that trims old transitions must not make us replay or skip.
        self.seen_transitions = self.seen_transitions.min(i.transitions.len());
        for t in &i.transitions[self.seen_transitions..] {
            if t.state != self.last_state {
                lines.push(state_line(&i.id, &t.state, t.reason.as_deref()));
                self.last_state = t.state.clone();
            }
        }
        self.seen_transitions = i.transitions.len();
        if i.state != self.last_state {
            lines.push(state_line(&i.id, &i.state, i.state_reason.as_deref()));
            self.last_state = i.state.clone();
        }
        lines
    }
}

/// How to reach a running instance's app.
pub fn render_access(i: &Instance, client: &Client) -> String {
    let mut head = format!("{} {}", output::clean(&i.id), output::clean(&i.state));
    if let Some(h) = &i.host {
        head.push_str(&format!(" on {}", output::clean(h)));
    }
    head.push('\n');
    let Some(app) = &i.app else {
        return head;
    };
    let mut pairs = vec![];
    if let Some(k) = app.kind.as_ref().filter(|k| !k.is_empty()) {
        pairs.push(("app", k.clone()));
    }
    if let Some(u) = &app.url {
        pairs.push(("url", client.absolute(u)));
    }
    if let Some(t) = &app.token {
        pairs.push(("token", t.clone()));
    }
    if let Some(p) = &app.password {
        pairs.push(("password", p.clone()));
    }
    head + &output::key_values(&pairs)
}

/// The `ps` table; OWNER only with `--all`.
pub fn render_ps(list: &[Instance], all: bool, now_ms: u64) -> String {
    if list.is_empty() {
        return if all {
            "no instances\n".into()
        } else {
            "no instances; start one with `cairn launch BLUEPRINT`\n".into()
        };
    }
    let mut headers = vec!["ID", "BLUEPRINT", "STATE", "HOST", "AGE", "TIME LEFT"];
    if all {
        headers.push("OWNER");
    }
    let mut t = Table::new(&headers);
    for i in list {
        let age = i.created_ms.map_or_else(
            || "-".into(),
            |c| output::duration_ms(now_ms.saturating_sub(c)),
        );
        let left = time_left(i, now_ms);
        let mut row = vec![
            i.id.clone(),
            i.blueprint.clone().unwrap_or_else(|| "-".into()),
            i.state.clone(),
            i.host.clone().unwrap_or_else(|| "-".into()),
            age,
            left,
        ];
        if all {
            row.push(i.owner.clone().unwrap_or_else(|| "-".into()));
        }
        t.row(row);
    }
    t.render()
}

/// What is left of an instance's lifetime: the controller's `time_left_secs` if it
/// sent one, else `expires_ms` against our clock; `-` once the instance is over.
pub fn time_left(i: &Instance, now_ms: u64) -> String {
    if i.is_over() {
        return "-".into();
    }
    let left_ms = match (i.time_left_secs, i.expires_ms) {
        (Some(s), _) => s.saturating_mul(1000),
        (None, Some(e)) => e.saturating_sub(now_ms),
        (None, None) => return "-".into(),
    };
    if left_ms == 0 {
        "expired".into()
    } else {
        output::duration_ms(left_ms)
    }
}

/// The JSON an instance command sends (exposed for tests).
pub fn launch_body(blueprint: &str) -> Value {
    json!({ "blueprint": blueprint })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, Source};

    fn inst(v: Value) -> Instance {
        serde_json::from_value(v).unwrap()
    }

    fn sample() -> Vec<Instance> {
        serde_json::from_value(json!([
            {"id":"i-0123456789abcdef","owner":"alice","blueprint":"python","revision":2,"state":"running",
             "state_reason":null,"host":"h-aaaa","created_ms":1_000_000,"expires_ms":1_000_000 + 3_600_000,
             "transitions":[],"app":{"kind":"jupyter","url":"/i/i-0123456789abcdef/","token":"tok","password":null}},
            {"id":"i-fedcba9876543210","owner":"bob","blueprint":"rstudio","state":"queued",
             "host":null,"created_ms":1_590_000,"expires_ms":1_200_000},
            {"id":"i-1111111111111111","owner":"bob","blueprint":"python","state":"failed",
             "state_reason":"image not found","host":"h-bbbb","created_ms":400_000,"expires_ms":4_000_000},
            {"id":"i-2222222222222222","state":"starting"}
        ]))
        .unwrap()
    }

    #[test]
    fn ps_renders_own_instances() {
        assert_eq!(
            render_ps(&sample(), false, 1_600_000),
            "ID                   BLUEPRINT   STATE      HOST     AGE   TIME LEFT\n\
             i-0123456789abcdef   python      running    h-aaaa   10m   50m\n\
             i-fedcba9876543210   rstudio     queued     -        10s   expired\n\
             i-1111111111111111   python      failed     h-bbbb   20m   -\n\
             i-2222222222222222   -           starting   -        -     -\n"
        );
    }

    #[test]
    fn ps_all_adds_the_owner() {
        let text = render_ps(&sample(), true, 1_600_000);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "ID                   BLUEPRINT   STATE      HOST     AGE   TIME LEFT   OWNER"
        );
        assert!(lines.next().unwrap().ends_with("50m         alice"));
        assert!(lines.last().unwrap().ends_with("-           -"));
        assert_eq!(
            render_ps(&[], false, 0),
            "no instances; start one with `cairn launch BLUEPRINT`\n"
        );
    }

    #[test]
    fn time_left_prefers_the_controllers_count() {
        let i = inst(json!({"id":"i-1","state":"running","expires_ms":10_000,"time_left_secs":90}));
        assert_eq!(time_left(&i, 0), "1m");
        let i = inst(json!({"id":"i-1","state":"running","expires_ms":10_000}));
        assert_eq!(time_left(&i, 4_000), "6s");
        let i = inst(json!({"id":"i-1","state":"running","time_left_secs":0}));
        assert_eq!(time_left(&i, 0), "expired");
        let i = inst(json!({"id":"i-1","state":"stopped","time_left_secs":0}));
        assert_eq!(time_left(&i, 0), "-");
    }

    #[test]
    fn waiting_shows_every_state_once_even_between_polls() {
        let launched = inst(json!({"id":"i-1","state":"queued",
            "transitions":[{"state":"queued","at_ms":1,"reason":"launched"}]}));
        let (mut p, first) = Progress::start(&launched);
        assert_eq!(first, ["i-1 queued: launched\n"]);
        // Two states passed between polls.
        let later = inst(json!({"id":"i-1","state":"preparing","transitions":[
            {"state":"queued","at_ms":1,"reason":"launched"},
            {"state":"scheduled","at_ms":2,"reason":"placed on h-1"},
            {"state":"preparing","at_ms":3,"reason":"pulling the image"}]}));
        assert_eq!(
            p.update(&later),
            [
                "i-1 scheduled: placed on h-1\n",
                "i-1 preparing: pulling the image\n"
            ]
        );
        assert!(p.update(&later).is_empty(), "nothing new, nothing printed");
        // A server without transitions: the state alone tells.
        let bare = inst(json!({"id":"i-1","state":"running","state_reason":null}));
        assert_eq!(p.update(&bare), ["i-1 running\n"]);
    }

    #[test]
    fn outcomes_of_waiting() {
        assert!(matches!(
            outcome(&inst(json!({"id":"i-1","state":"running"}))),
            Outcome::Running
        ));
        assert!(matches!(
            outcome(&inst(json!({"id":"i-1","state":"preparing"}))),
            Outcome::Pending
        ));
        match outcome(&inst(
            json!({"id":"i-1","state":"failed","state_reason":"image not found"}),
        )) {
            Outcome::Failed(e) => {
                assert_eq!(e.to_string(), "instance i-1 failed: image not found");
                assert_eq!(e.exit_code(), 1);
            }
            other => panic!("{other:?}"),
        }
        match outcome(&inst(json!({"id":"i-1","state":"stopped",
            "transitions":[{"state":"stopped","at_ms":1,"reason":"stopped by alice"}]})))
        {
            Outcome::Failed(e) => {
                assert_eq!(e.to_string(), "instance i-1 stopped: stopped by alice")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn access_shows_an_absolute_url_and_the_secrets() {
        let client = Client::new(&Settings {
            url: "http://cairn.example.org:7080".into(),
            url_source: Source::Flag,
            token: None,
            token_source: None,
            token_withheld_for: None,
        })
        .unwrap();
        assert_eq!(
            render_access(&sample()[0], &client),
            "i-0123456789abcdef running on h-aaaa\n\
             app:    jupyter\n\
             url:    http://cairn.example.org:7080/i/i-0123456789abcdef/\n\
             token:  tok\n"
        );
        assert_eq!(state_line("i-1", "stopping", Some(" ")), "i-1 stopping\n");
        assert_eq!(launch_body("python"), json!({"blueprint": "python"}));
    }
}
