//! `cairn-bench`: measurements that belong in the README, not in tests.
//!
//! * `idle-agent` — resident memory and CPU of an idle real agent (and its
//!   controller) over a window.
//! * `launch` — time from `POST /instances` to `running`, beside `docker run` plus
//!   waiting for the port, interleaved in one run.
//! * `heartbeats` — controller CPU and memory while N hollow agents (the real link and
//!   protocol, fake host facts, one QUIC connection and certificate each, all in this
//!   process) heartbeat at the configured interval.
//!
//! Each prints a table and, with `--json FILE`, writes the figures as JSON.
//! Build with `--release`; the controller and agent binaries are taken from the
//! same target directory as this one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_agent::enrol::{self, JoinOptions};
use cairn_agent::facts::hollow::HollowFacts;
use cairn_agent::link::{self, LinkOptions};
use cairn_shared::identity::Fingerprint;
use cairn_tests::cluster::{Agent, Controller, ControllerOptions};
use cairn_tests::procstat::{self, cpu_percent};
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "cairn-bench", about = "Cairn measurements")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Memory and CPU of an idle agent.
    IdleAgent {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Heartbeat interval of the controller.
        #[arg(long, default_value = "5s")]
        interval: String,
    },
    /// Launch latency of Cairn beside plain `docker run`.
    Launch {
        #[arg(long, default_value_t = 50)]
        count: usize,
    },
    /// Controller cost of many agents' heartbeats.
    Heartbeats {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value = "5s")]
        interval: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::IdleAgent { seconds, interval } => idle_agent(seconds, &interval).await?,
        Cmd::Heartbeats {
            agents,
            interval,
            seconds,
        } => heartbeats(agents, &interval, seconds).await?,
        Cmd::Launch { count } => launch(count).await?,
    };
    if let Some(p) = cli.json {
        std::fs::write(&p, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

struct Usage {
    cpu_pct: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
}

fn usage(samples: &[procstat::Sample]) -> Result<Usage> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        bail!("no samples")
    };
    Ok(Usage {
        cpu_pct: cpu_percent(first, last),
        rss_mib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        peak_rss_mib: last.peak_rss_kib as f64 / 1024.0,
    })
}

async fn idle_agent(seconds: u64, interval: &str) -> Result<serde_json::Value> {
    let tmp = tempfile::tempdir()?;
    let opts = ControllerOptions {
        heartbeat: leak_str(interval),
        lost_after: "10m",
        ..Default::default()
    };
    let mut ctl = Controller::init(tmp.path(), &opts);
    ctl.start().await;
    let mut agent = Agent::new(tmp.path(), "idle");
    let id = agent.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    agent.start();
    ctl.wait_host_state(&id, "active", Duration::from_secs(30))
        .await;
    // Let start-up settle before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (apid, cpid) = (
        agent.pid().context("agent pid")?,
        ctl.pid().context("controller pid")?,
    );
    let (a, c) = tokio::join!(
        procstat::watch(
            apid,
            Duration::from_secs(seconds),
            Duration::from_millis(500)
        ),
        procstat::watch(
            cpid,
            Duration::from_secs(seconds),
            Duration::from_millis(500)
        ),
    );
    let (a, c) = (usage(&a)?, usage(&c)?);
    println!("idle agent over {seconds} s, heartbeat every {interval} (real Docker facts)");
    println!("| process    | CPU (% of one core) | RSS max (MiB) | peak RSS (MiB) |");
    println!("|------------|--------------------:|--------------:|---------------:|");
    println!(
        "| agent      | {:>19.3} | {:>13.1} | {:>14.1} |",
        a.cpu_pct, a.rss_mib, a.peak_rss_mib
    );
    println!(
        "| controller | {:>19.3} | {:>13.1} | {:>14.1} |",
        c.cpu_pct, c.rss_mib, c.peak_rss_mib
    );
    Ok(json!({
        "bench": "idle-agent", "seconds": seconds, "interval": interval,
        "agent": {"cpu_pct": a.cpu_pct, "rss_mib": a.rss_mib, "peak_rss_mib": a.peak_rss_mib},
        "controller": {"cpu_pct": c.cpu_pct, "rss_mib": c.rss_mib, "peak_rss_mib": c.peak_rss_mib},
    }))
}

async fn heartbeats(n: usize, interval: &str, seconds: u64) -> Result<serde_json::Value> {
    let tmp = tempfile::tempdir()?;
    let opts = ControllerOptions {
        heartbeat: leak_str(interval),
        lost_after: "10m",
        ..Default::default()
    };
    let mut ctl = Controller::init(tmp.path(), &opts);
    ctl.start().await;
    let token = ctl.token("1h", n as u32);
    let fp = Fingerprint::parse(&ctl.ca_sha256)?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;

    // Enrol every hollow host: each gets its own key and certificate.
    let t0 = Instant::now();
    let mut states = Vec::with_capacity(n);
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (ep, sem, token, link) = (endpoint.clone(), sem.clone(), token.clone(), ctl.link);
        tasks.spawn(async move {
            let _permit = sem.acquire().await;
            let opts = JoinOptions {
                controller: link.to_string(),
                token,
                ca_sha256: fp,
                state_dir: Default::default(),
                labels: Default::default(),
                hostname: format!("hollow-{i}"),
                force: true,
            };
            enrol::enrol_on(&ep, link, &opts).await.map(|s| (i, s))
        });
    }
    while let Some(r) = tasks.join_next().await {
        states.push(r??);
    }
    let enrol_secs = t0.elapsed().as_secs_f64();
    eprintln!("enrolled {n} hollow hosts in {enrol_secs:.1} s");

    let stop = CancellationToken::new();
    let t1 = Instant::now();
    for (i, state) in states {
        let facts = Arc::new(HollowFacts::new(i));
        let lo = LinkOptions::default();
        tokio::spawn(link::run(
            state,
            facts,
            Some(endpoint.clone()),
            lo,
            stop.clone(),
        ));
    }
    loop {
        let (_, health) = ctl.get_with("/healthz", None).await;
        let active = health["hosts"]["active"].as_u64().unwrap_or(0) as usize;
        if active == n {
            break;
        }
        if t1.elapsed() > Duration::from_secs(300) {
            bail!("only {active} of {n} hosts active after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_secs = t1.elapsed().as_secs_f64();
    eprintln!("all {n} connected in {connect_secs:.1} s; measuring for {seconds} s");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpid = ctl.pid().context("controller pid")?;
    let me = std::process::id();
    let (c, h) = tokio::join!(
        procstat::watch(cpid, Duration::from_secs(seconds), Duration::from_secs(1)),
        procstat::watch(me, Duration::from_secs(seconds), Duration::from_secs(1)),
    );
    let (c, h) = (usage(&c)?, usage(&h)?);
    let (_, health) = ctl.get_with("/healthz", None).await;
    let still_active = health["hosts"]["active"].as_u64().unwrap_or(0);
    let interval_s = humantime::parse_duration(interval)?.as_secs_f64();
    let rate = n as f64 / interval_s;
    stop.cancel();
    println!("{n} hollow agents, heartbeat every {interval}, {seconds} s window ({rate:.0} heartbeats/s)");
    println!("| process                 | CPU (% of one core) | RSS max (MiB) | peak RSS (MiB) |");
    println!("|-------------------------|--------------------:|--------------:|---------------:|");
    println!(
        "| controller              | {:>19.2} | {:>13.1} | {:>14.1} |",
        c.cpu_pct, c.rss_mib, c.peak_rss_mib
    );
    println!(
        "| hollow agents (1 proc)  | {:>19.2} | {:>13.1} | {:>14.1} |",
        h.cpu_pct, h.rss_mib, h.peak_rss_mib
    );
    println!("enrolment: {enrol_secs:.1} s for {n}; all connected {connect_secs:.1} s later; active at end: {still_active}/{n}");
    Ok(json!({
        "bench": "heartbeats", "agents": n, "interval": interval, "seconds": seconds, "heartbeats_per_s": rate,
        "controller": {"cpu_pct": c.cpu_pct, "rss_mib": c.rss_mib, "peak_rss_mib": c.peak_rss_mib},
        "hollow_process": {"cpu_pct": h.cpu_pct, "rss_mib": h.rss_mib},
        "enrol_secs": enrol_secs, "connect_secs": connect_secs, "active_at_end": still_active,
    }))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Polls a TCP connect to `addr` every millisecond until it succeeds.
async fn wait_port(addr: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("{addr} did not answer within {timeout:?}")
}

fn docker_cli(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn launch(count: usize) -> Result<serde_json::Value> {
    use reqwest::Method;
    let image = cairn_tests::images::busybox_image();
    let tmp = tempfile::tempdir()?;
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let mut agent = Agent::new(tmp.path(), "bench");
    let host = agent.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    agent.start();
    ctl.wait_host_state(&host, "active", Duration::from_secs(30))
        .await;
    let cmd = [
        "sh",
        "-c",
        "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
    ];
    let bp = json!({"name": "bench", "image": image, "app": "http", "app_port": 8080, "memory_mib": 64, "cpus": 0.5, "command": cmd});
    let (s, b) = ctl.send(Method::POST, "/api/v1/blueprints", Some(bp)).await;
    if s != 201 {
        bail!("creating the blueprint: {b}");
    }
    let token = ctl.user("bench", "user").await;
    let mut cairn = vec![];
    let mut plain = vec![];
    for round in 0..count {
        // Cairn: request accepted → the agent reports the app answering.
        let t0 = Instant::now();
        let (s, inst) = ctl
            .request(
                Some(&token),
                Method::POST,
                "/api/v1/instances",
                Some(json!({"blueprint": "bench"})),
            )
            .await;
        if s != 201 {
            bail!("launch {round}: {inst}");
        }
        let id = inst["id"].as_str().context("id")?.to_string();
        let path = format!("/api/v1/instances/{id}");
        loop {
            let (_, i) = ctl.request(Some(&token), Method::GET, &path, None).await;
            match i["state"].as_str() {
                Some("running") => break,
                Some("failed") => bail!("instance failed: {i}"),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("launch {round} did not reach running");
            }
        }
        cairn.push(t0.elapsed().as_secs_f64() * 1000.0);
        ctl.request(Some(&token), Method::DELETE, &path, None).await;
        loop {
            let (_, i) = ctl.request(Some(&token), Method::GET, &path, None).await;
            if i["state"] == "stopped" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Plain Docker on the same network and limits: run, find the address, wait for the port.
        let t0 = Instant::now();
        let name = format!("bench-plain-{}", std::process::id());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "cairn",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            &image,
        ];
        args.extend(cmd);
        docker_cli(&args)?;
        let ip = docker_cli(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.Networks.cairn.IPAddress}}",
            &name,
        ])?;
        wait_port(&format!("{ip}:8080"), Duration::from_secs(60)).await?;
        plain.push(t0.elapsed().as_secs_f64() * 1000.0);
        docker_cli(&["rm", "-f", &name])?;
    }
    agent.kill9();
    cairn.sort_by(f64::total_cmp);
    plain.sort_by(f64::total_cmp);
    let (c50, c95, p50, p95) = (
        percentile(&cairn, 0.5),
        percentile(&cairn, 0.95),
        percentile(&plain, 0.5),
        percentile(&plain, 0.95),
    );
    println!("launch to running, {count} launches each, interleaved (image present, same limits and network)");
    println!("| path                               | p50 (ms) | p95 (ms) |");
    println!("|------------------------------------|---------:|---------:|");
    println!("| cairn: POST /instances → running   | {c50:>8.1} | {c95:>8.1} |");
    println!("| docker run + wait for port         | {p50:>8.1} | {p95:>8.1} |");
    println!(
        "| ratio cairn / docker               | {:>8.2} | {:>8.2} |",
        c50 / p50,
        c95 / p95
    );
    println!(
        "added by cairn: p50 {:+.1} ms, p95 {:+.1} ms",
        c50 - p50,
        c95 - p95
    );
    Ok(json!({"bench": "launch", "count": count,
        "cairn_ms": {"p50": c50, "p95": c95}, "docker_run_ms": {"p50": p50, "p95": p95},
        "ratio": {"p50": c50 / p50, "p95": c95 / p95}}))
}
