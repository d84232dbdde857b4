//! `cairn-bench`: measurements that belong in the README, not in tests.
//!
//! * `idle-agent` — resident memory and CPU of an idle real agent (and its
//!   controller) over a window.
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
