//! `launch`, `ps`, `stop` and `logs`: a user's instances.
//!
//! `launch --wait` polls the instance every 500 ms and prints each state it passes
//! through (from the instance's `transitions`, so a state that came and went between
//! two polls is shown too) until it is `running` or has failed.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use crate::client::{body, parse, Client};
use crate::error::Error;
use crate::output::{self, Table};
use cairn_api::instances::{InstanceState, InstanceView as Instance, Launch};

/// How often `launch --wait` asks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

pub async fn launch(
    ctx: &Ctx,
    blueprint: &str,
    volume: Option<&str>,
    wait: Option<Duration>,
) -> Result<(), Error> {
    let v = ctx
        .client
        .post(&["instances"], Some(&launch_body(blueprint, volume)?))
        .await?;
    let inst: Instance = parse(&v, "the new instance")?;
    let Some(timeout) = wait else {
        return ctx.emit(&v, || {
            let mut s = state_line(inst.id.as_str(), inst.state.as_str(), None);
            if inst.state == InstanceState::Running {
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
                id: inst.id.to_string(),
                state: inst.state.to_string(),
                waited: humantime::format_duration(timeout).to_string(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        v = ctx.client.get(&["instances", inst.id.as_str()]).await?;
        inst = parse(&v, "the instance")?;
        progress(tracker.update(&inst))?;
    }
    ctx.emit(&v, || Ok(render_access(&inst, &ctx.client)))
}

pub async fn ps(ctx: &Ctx, all: bool, group: Option<&str>) -> Result<(), Error> {
    let query = if all {
        vec![("all", "true".to_string())]
    } else {
        vec![]
    };
    let v = match group {
        Some(g) => ctx.client.get(&["groups", g, "instances"]).await?,
        None => {
            ctx.client
                .json(Method::GET, &["instances"], &query, None)
                .await?
        }
    };
    let all = all || group.is_some();
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
        Ok(state_line(inst.id.as_str(), inst.state.as_str(), None))
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
    if i.state == InstanceState::Running {
        Outcome::Running
    } else if i.state.is_over() {
        Outcome::Failed(Error::InstanceFailed {
            id: i.id.to_string(),
            state: i.state.to_string(),
            reason: reason(i).unwrap_or_else(|| "no reason given".into()),
        })
    } else {
        Outcome::Pending
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
    last_state: InstanceState,
}

impl Progress {
    /// Starts from a freshly launched instance; returns the line for its state.
    pub fn start(i: &Instance) -> (Self, Vec<String>) {
        let p = Progress {
            seen_transitions: i.transitions.len(),
            last_state: i.state,
        };
        (
            p,
            vec![state_line(
                i.id.as_str(),
                i.state.as_str(),
                reason(i).as_deref(),
            )],
        )
    }

    /// The lines for what happened since the last look.
    pub fn update(&mut self, i: &Instance) -> Vec<String> {
        let mut lines = vec![];
        // A server that trims old transitions must not make us replay or skip.
        self.seen_transitions = self.seen_transitions.min(i.transitions.len());
        for t in &i.transitions[self.seen_transitions..] {
            if t.state != self.last_state {
                lines.push(state_line(
                    i.id.as_str(),
                    t.state.as_str(),
                    t.reason.as_deref(),
                ));
                self.last_state = t.state;
            }
        }
        self.seen_transitions = i.transitions.len();
        if i.state != self.last_state {
            lines.push(state_line(
                i.id.as_str(),
                i.state.as_str(),
                i.state_reason.as_deref(),
            ));
            self.last_state = i.state;
        }
        lines
    }
}

/// How to reach a running instance's app.
pub fn render_access(i: &Instance, client: &Client) -> String {
    let mut head = format!("{} {}", i.id, i.state);
    if let Some(h) = &i.host {
        head.push_str(&format!(" on {h}"));
    }
    head.push('\n');
    let app = &i.app;
    let mut pairs = vec![];
    if let Some(k) = app.kind {
        pairs.push(("app", k.to_string()));
    }
    if !app.url.is_empty() {
        pairs.push(("url", client.absolute(&app.url)));
    }
    if let Some(t) = &app.token {
        pairs.push(("token", t.clone()));
    }
    if let Some(p) = &app.password {
        pairs.push(("password", p.clone()));
    }
    if !i.datasets.is_empty() {
        let mounts: Vec<String> = i.datasets.iter().map(|d| d.to_string()).collect();
        pairs.push(("datasets", mounts.join("\n")));
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
    let mut headers = vec![
        "ID",
        "BLUEPRINT",
        "STATE",
        "HOST",
        "AGE",
        "TIME LEFT",
        "ACTIVE",
    ];
    if all {
        headers.push("OWNER");
    }
    let mut t = Table::new(&headers);
    for i in list {
        let age = output::duration_ms(now_ms.saturating_sub(i.created_ms));
        let left = time_left(i);
        let mut row = vec![
            i.id.to_string(),
            i.blueprint.clone(),
            i.state.to_string(),
            i.host
                .as_ref()
                .map_or_else(|| "-".into(), |h| h.to_string()),
            age,
            left,
            activity(i, now_ms),
        ];
        if all {
            row.push(i.owner.clone());
        }
        t.row(row);
    }
    t.render()
}

/// When the instance was last used through the proxy (`5m ago`), with the idle
/// stop when it is near; `-` before any use.
pub fn activity(i: &Instance, now_ms: u64) -> String {
    let mut s = i
        .last_activity_ms
        .map_or_else(|| "-".into(), |t| output::ago(now_ms, t));
    if let Some(at) = i.idle_stop_ms {
        s.push_str(&format!(
            " (idle: stops in {})",
            output::duration_ms(at.saturating_sub(now_ms))
        ));
    }
    s
}

/// What is left of an instance's lifetime, by the controller's count (immune to a
/// skewed local clock); `-` once the instance is over.
pub fn time_left(i: &Instance) -> String {
    if i.state.is_over() {
        return "-".into();
    }
    match i.time_left_secs {
        0 => "expired".into(),
        s => output::duration_ms(s.saturating_mul(1000)),
    }
}

/// The JSON an instance command sends (exposed for tests).
pub fn launch_body(blueprint: &str, volume: Option<&str>) -> Result<Value, Error> {
    body(&Launch {
        blueprint: blueprint.into(),
        volume: volume.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, Source};
    use cairn_api::instances::{AppView, Transition};
    use cairn_api::{HostId, InstanceId};
    use serde_json::json;

    const I1: &str = "i-0000000000000001";

    /// An instance in `state` with nothing else to say.
    fn inst(id: &str, state: InstanceState) -> Instance {
        Instance {
            id: InstanceId::parse(id).unwrap(),
            owner: "alice".into(),
            blueprint: "python".into(),
            revision: 1,
            state,
            state_reason: None,
            host: None,
            address: None,
            created_ms: 0,
            expires_ms: 0,
            time_left_secs: 0,
            transitions: vec![],
            app: AppView {
                kind: None,
                url: format!("/i/{id}/"),
                token: None,
                password: None,
            },
            queue_position: None,
            datasets: vec![],
            volume: None,
            group: None,
            last_activity_ms: None,
            idle_stop_ms: None,
        }
    }

    fn step(state: InstanceState, at_ms: u64, reason: &str) -> Transition {
        Transition {
            state,
            at_ms,
            reason: Some(reason.into()),
        }
    }

    fn sample() -> Vec<Instance> {
        // As the controller sends it (the owner sees the app's token).
        let first: Instance = serde_json::from_value(json!(
            {"id":"i-0123456789abcdef","owner":"alice","blueprint":"python","revision":2,"state":"running",
             "state_reason":null,"host":"h-aaaaaaaaaaaaaaaa","address":"172.18.0.2:8888",
             "created_ms":1_000_000,"expires_ms":1_000_000 + 3_600_000,"time_left_secs":3000,
             "transitions":[],"app":{"kind":"jupyter","url":"/i/i-0123456789abcdef/","token":"tok"},
             "group":"everyone","last_activity_ms":1_480_000,"idle_stop_ms":2_080_000}
        ))
        .unwrap();
        let queued = Instance {
            owner: "bob".into(),
            blueprint: "rstudio".into(),
            created_ms: 1_590_000,
            ..inst("i-fedcba9876543210", InstanceState::Queued)
        };
        let failed = Instance {
            owner: "bob".into(),
            state_reason: Some("image not found".into()),
            host: Some(HostId::parse("h-bbbbbbbbbbbbbbbb").unwrap()),
            created_ms: 400_000,
            ..inst("i-1111111111111111", InstanceState::Failed)
        };
        let starting = Instance {
            owner: "carol".into(),
            created_ms: 1_540_000,
            time_left_secs: 60,
            ..inst("i-2222222222222222", InstanceState::Starting)
        };
        vec![first, queued, failed, starting]
    }

    #[test]
    fn ps_renders_own_instances() {
        assert_eq!(
            render_ps(&sample(), false, 1_600_000),
            "ID                   BLUEPRINT   STATE      HOST                 AGE   TIME LEFT   ACTIVE\n\
             i-0123456789abcdef   python      running    h-aaaaaaaaaaaaaaaa   10m   50m         2m ago (idle: stops in 8m)\n\
             i-fedcba9876543210   rstudio     queued     -                    10s   expired     -\n\
             i-1111111111111111   python      failed     h-bbbbbbbbbbbbbbbb   20m   -           -\n\
             i-2222222222222222   python      starting   -                    1m    1m          -\n"
        );
    }

    #[test]
    fn ps_all_adds_the_owner() {
        let text = render_ps(&sample(), true, 1_600_000);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "ID                   BLUEPRINT   STATE      HOST                 AGE   TIME LEFT   ACTIVE                       OWNER"
        );
        assert!(lines
            .next()
            .unwrap()
            .ends_with("(idle: stops in 8m)   alice"));
        assert!(lines
            .last()
            .unwrap()
            .ends_with("1m          -                            carol"));
        assert_eq!(
            render_ps(&[], false, 0),
            "no instances; start one with `cairn launch BLUEPRINT`\n"
        );
    }

    #[test]
    fn time_left_is_the_controllers_count() {
        let running = |secs| Instance {
            time_left_secs: secs,
            ..inst(I1, InstanceState::Running)
        };
        assert_eq!(time_left(&running(90)), "1m");
        assert_eq!(time_left(&running(0)), "expired");
        assert_eq!(time_left(&inst(I1, InstanceState::Stopped)), "-");
        assert_eq!(time_left(&inst(I1, InstanceState::Stopping)), "-");
    }

    #[test]
    fn waiting_shows_every_state_once_even_between_polls() {
        let launched = Instance {
            transitions: vec![step(InstanceState::Queued, 1, "launched")],
            ..inst(I1, InstanceState::Queued)
        };
        let (mut p, first) = Progress::start(&launched);
        assert_eq!(first, [format!("{I1} queued: launched\n")]);
        // Two states passed between polls.
        let later = Instance {
            transitions: vec![
                step(InstanceState::Queued, 1, "launched"),
                step(InstanceState::Scheduled, 2, "placed on h-1"),
                step(InstanceState::Preparing, 3, "pulling the image"),
            ],
            ..inst(I1, InstanceState::Preparing)
        };
        assert_eq!(
            p.update(&later),
            [
                format!("{I1} scheduled: placed on h-1\n"),
                format!("{I1} preparing: pulling the image\n")
            ]
        );
        assert!(p.update(&later).is_empty(), "nothing new, nothing printed");
        // A server that trimmed its transitions: the state alone tells.
        let bare = inst(I1, InstanceState::Running);
        assert_eq!(p.update(&bare), [format!("{I1} running\n")]);
    }

    #[test]
    fn outcomes_of_waiting() {
        assert!(matches!(
            outcome(&inst(I1, InstanceState::Running)),
            Outcome::Running
        ));
        assert!(matches!(
            outcome(&inst(I1, InstanceState::Preparing)),
            Outcome::Pending
        ));
        let failed = Instance {
            state_reason: Some("image not found".into()),
            ..inst(I1, InstanceState::Failed)
        };
        match outcome(&failed) {
            Outcome::Failed(e) => {
                assert_eq!(
                    e.to_string(),
                    format!("instance {I1} failed: image not found")
                );
                assert_eq!(e.exit_code(), 1);
            }
            other => panic!("{other:?}"),
        }
        let stopped = Instance {
            transitions: vec![step(InstanceState::Stopped, 1, "stopped by alice")],
            ..inst(I1, InstanceState::Stopped)
        };
        match outcome(&stopped) {
            Outcome::Failed(e) => {
                assert_eq!(
                    e.to_string(),
                    format!("instance {I1} stopped: stopped by alice")
                )
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
            "i-0123456789abcdef running on h-aaaaaaaaaaaaaaaa\n\
             app:    jupyter\n\
             url:    http://cairn.example.org:7080/i/i-0123456789abcdef/\n\
             token:  tok\n"
        );
        assert_eq!(state_line("i-1", "stopping", Some(" ")), "i-1 stopping\n");
        assert_eq!(
            launch_body("python", None).unwrap(),
            json!({"blueprint": "python"})
        );
    }
}
