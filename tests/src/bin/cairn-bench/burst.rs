//! `cairn-bench burst`: a class arriving at once. N users log in and each launches
//! one small blueprint, all at the same moment, against a controller and two agents
//! on this machine's one Docker Engine; then the bench waits until every instance is
//! running or failed and prints what the students saw: how many were accepted, ran
//! and failed (and why), the latency of the login and launch calls, and the time
//! until the last one ran.
//!
//! The image is the busybox-static test image built locally (`"pull": "never"`): no
//! registry, no network. Every container the two agents made is removed at the end,
//! also when the bench fails half-way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_tests::cluster::{Agent, Controller, ControllerOptions};
use serde_json::{json, Value};

/// The goals printed beside the results.
const GOAL_LAUNCH_P99_MS: f64 = 100.0;
const GOAL_LAST_RUNNING_S: f64 = 60.0;

/// Removes every container of the given hosts (by their `cairn.host` label) when
/// dropped, whatever happened before.
struct HostContainers(Vec<String>);

impl Drop for HostContainers {
    fn drop(&mut self) {
        for host in &self.0 {
            let out = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label=cairn.host={host}")])
                .output();
            let ids: Vec<String> = match out {
                Ok(o) => String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
                Err(e) => {
                    eprintln!("cannot list the containers of host {host}: {e}");
                    continue;
                }
            };
            for chunk in ids.chunks(50) {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(chunk)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            if !ids.is_empty() {
                eprintln!("removed {} containers of host {host}", ids.len());
            }
        }
    }
}

/// Enrols and starts an agent with `env`, and waits until its host is active.
async fn agent(
    ctl: &Controller,
    root: &std::path::Path,
    name: &str,
    slots: Option<usize>,
) -> Agent {
    let mut a = Agent::new(root, name);
    let host = a.join_ok(ctl, &ctl.token("5m", 1), &[]);
    let slots = slots.map(|s| s.to_string());
    let env: Vec<(&str, &std::ffi::OsStr)> = slots
        .iter()
        .map(|s| {
            (
                "CAIRN_AGENT_CONTAINER_SLOTS",
                std::ffi::OsStr::new(s.as_str()),
            )
        })
        .collect();
    a.start_with_env(&env);
    ctl.wait_host_state(&host, "active", Duration::from_secs(30))
        .await;
    a
}

/// One student's login and launch, as timed from the client.
#[derive(Debug, Default)]
struct Attempt {
    login_ms: Option<f64>,
    launch_ms: Option<f64>,
    instance: Option<String>,
    error: Option<String>,
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Result<(u16, Value)> {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

async fn student(
    http: reqwest::Client,
    api: String,
    name: String,
    go: Arc<tokio::sync::Barrier>,
) -> Attempt {
    let mut a = Attempt::default();
    go.wait().await;
    let t0 = Instant::now();
    let login = post(
        &http,
        format!("{api}/api/v1/login"),
        None,
        json!({"user": name, "password": format!("{name}-password-1")}),
    )
    .await;
    a.login_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    let token = match login {
        Ok((200, b)) => match b["token"].as_str() {
            Some(t) => t.to_string(),
            None => {
                a.error = Some(format!("login answered no token: {b}"));
                return a;
            }
        },
        Ok((s, b)) => {
            a.error = Some(format!("login {s}: {b}"));
            return a;
        }
        Err(e) => {
            a.error = Some(format!("login: {e}"));
            return a;
        }
    };
    let t1 = Instant::now();
    let launch = post(
        &http,
        format!("{api}/api/v1/instances"),
        Some(&token),
        json!({"blueprint": "burst"}),
    )
    .await;
    a.launch_ms = Some(t1.elapsed().as_secs_f64() * 1000.0);
    match launch {
        Ok((201, b)) => a.instance = b["id"].as_str().map(str::to_string),
        Ok((s, b)) => a.error = Some(format!("launch {s}: {b}")),
        Err(e) => a.error = Some(format!("launch: {e}")),
    }
    a
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub async fn burst(users: usize, slots: Option<usize>, timeout_s: u64) -> Result<Value> {
    let image = cairn_tests::images::busybox_image();
    let tmp = tempfile::tempdir()?;
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let mut agents = vec![];
    let mut guard = HostContainers(vec![]);
    for name in ["burst-a", "burst-b"] {
        let a = agent(&ctl, tmp.path(), name, slots).await;
        guard.0.push(a.host_id());
        agents.push(a);
    }
    // Small: 200 of them fit one 2-core host's CPU (0.01 each) and a few GiB.
    let bp = json!({"name": "burst", "image": image, "pull": "never", "app": "http", "app_port": 8080,
        "memory_mib": 16, "cpus": 0.01,
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]});
    ctl.blueprint(bp).await;

    eprintln!("creating {users} users");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(users)
        .timeout(Duration::from_secs(120))
        .build()?;
    for n in 0..users {
        let name = format!("student{n:03}");
        let (s, b) = ctl
            .send(
                reqwest::Method::POST,
                "/api/v1/users",
                Some(
                    json!({"name": name, "password": format!("{name}-password-1"), "role": "user"}),
                ),
            )
            .await;
        if s != 201 {
            bail!("creating user {name}: {s} {b}");
        }
    }

    eprintln!("{users} students log in and launch at once");
    let go = Arc::new(tokio::sync::Barrier::new(users + 1));
    let tasks: Vec<_> = (0..users)
        .map(|n| {
            tokio::spawn(student(
                http.clone(),
                ctl.api.clone(),
                format!("student{n:03}"),
                go.clone(),
            ))
        })
        .collect();
    go.wait().await;
    let t0 = Instant::now();
    let mut attempts = vec![];
    for t in tasks {
        attempts.push(t.await.context("a student's task")?);
    }
    let accepted: Vec<String> = attempts.iter().filter_map(|a| a.instance.clone()).collect();
    eprintln!(
        "{} of {users} accepted after {:.1} s; waiting for them to run",
        accepted.len(),
        t0.elapsed().as_secs_f64()
    );

    // Until every accepted instance has run or failed: the admin's list, polled.
    let mut ran_at: BTreeMap<String, f64> = BTreeMap::new();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut queue_seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    loop {
        let (s, list) = ctl
            .request(
                Some(&ctl.admin_token),
                reqwest::Method::GET,
                "/api/v1/instances?all=true",
                None,
            )
            .await;
        if s != 200 {
            bail!("listing instances: {s} {list}");
        }
        let now = t0.elapsed().as_secs_f64();
        for i in list.as_array().into_iter().flatten() {
            let Some(id) = i["id"].as_str() else { continue };
            match i["state"].as_str() {
                Some("running") => {
                    ran_at.entry(id.to_string()).or_insert(now);
                }
                Some("failed") => {
                    let reason = i["state_reason"].as_str().unwrap_or("?").to_string();
                    failed.entry(id.to_string()).or_insert(reason);
                }
                Some("preparing")
                    if i["state_reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("waiting for the host ("))
                        && !ran_at.contains_key(id) =>
                {
                    queue_seen += 1;
                }
                _ => {}
            }
        }
        let settled = accepted
            .iter()
            .filter(|id| ran_at.contains_key(*id) || failed.contains_key(*id))
            .count();
        if settled == accepted.len() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "{} of {} instances still launching after {timeout_s} s",
                accepted.len() - settled,
                accepted.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let last_running = ran_at.values().copied().fold(0.0, f64::max);
    let placements = hosts_of(&ctl, &accepted).await;

    // Stop everything: the agents first (so nothing recreates a container), then
    // their containers by label (the guard), then the controller.
    for a in &mut agents {
        a.kill9();
    }
    drop(guard);
    ctl.kill9();

    let mut login: Vec<f64> = attempts.iter().filter_map(|a| a.login_ms).collect();
    let mut launch: Vec<f64> = attempts.iter().filter_map(|a| a.launch_ms).collect();
    login.sort_by(f64::total_cmp);
    launch.sort_by(f64::total_cmp);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in failed.values() {
        *reasons.entry(r.clone()).or_default() += 1;
    }
    for e in attempts.iter().filter_map(|a| a.error.as_ref()) {
        *reasons.entry(format!("refused: {e}")).or_default() += 1;
    }
    let (running, nfailed) = (ran_at.len(), failed.len());
    let launching = accepted.len() - running.min(accepted.len()) - nfailed.min(accepted.len());
    let (l50, l99) = (percentile(&launch, 0.5), percentile(&launch, 0.99));
    let (g50, g99) = (percentile(&login, 0.5), percentile(&login, 0.99));

    println!(
        "burst: {users} users log in and launch one small blueprint at once; two agents on one Docker Engine{}",
        slots.map(|s| format!(", {s} container slots each")).unwrap_or_default()
    );
    println!("| measure                       | result     | goal       |");
    println!("|-------------------------------|-----------:|-----------:|");
    println!(
        "| accepted                      | {:>10} | {:>10} |",
        accepted.len(),
        users
    );
    println!("| running                       | {running:>10} | {users:>10} |");
    println!(
        "| failed                        | {nfailed:>10} | {:>10} |",
        0
    );
    if launching > 0 {
        println!(
            "| still launching at the end    | {launching:>10} | {:>10} |",
            0
        );
    }
    println!("| launch API p50 (ms)           | {l50:>10.1} |            |");
    println!(
        "| launch API p99 (ms)           | {l99:>10.1} | {:>10} |",
        format!("< {GOAL_LAUNCH_P99_MS:.0}")
    );
    println!("| login p50 (ms)                | {g50:>10.1} |            |");
    println!("| login p99 (ms)                | {g99:>10.1} |            |");
    println!(
        "| last running after (s)        | {last_running:>10.1} | {:>10} |",
        format!("< {GOAL_LAST_RUNNING_S:.0}")
    );
    println!(
        "| seen waiting in a host queue  | {:>10} |            |",
        queue_seen.min(accepted.len())
    );
    for (host, n) in &placements {
        println!("placed on {host}: {n}");
    }
    for (r, n) in &reasons {
        println!("failed ×{n}: {r}");
    }
    let met = running == users
        && nfailed == 0
        && l99 < GOAL_LAUNCH_P99_MS
        && last_running < GOAL_LAST_RUNNING_S;
    println!(
        "goal (all {users} running, none failed, launch p99 < {GOAL_LAUNCH_P99_MS:.0} ms, last running < {GOAL_LAST_RUNNING_S:.0} s): {}",
        if met { "met" } else { "NOT met" }
    );
    Ok(json!({
        "bench": "burst", "users": users, "slots": slots,
        "accepted": accepted.len(), "running": running, "failed": nfailed, "still_launching": launching,
        "failures": reasons,
        "launch_ms": {"p50": l50, "p99": l99}, "login_ms": {"p50": g50, "p99": g99},
        "last_running_s": last_running, "placements": placements, "goal_met": met,
    }))
}

/// How many of `ids` each host got.
async fn hosts_of(ctl: &Controller, ids: &[String]) -> BTreeMap<String, usize> {
    let (_, list) = ctl
        .request(
            Some(&ctl.admin_token),
            reqwest::Method::GET,
            "/api/v1/instances?all=true",
            None,
        )
        .await;
    let mut out = BTreeMap::new();
    for i in list.as_array().into_iter().flatten() {
        if i["id"]
            .as_str()
            .is_some_and(|id| ids.iter().any(|x| x == id))
        {
            let h = i["host"].as_str().unwrap_or("(none)").to_string();
            *out.entry(h).or_default() += 1;
        }
    }
    out
}
