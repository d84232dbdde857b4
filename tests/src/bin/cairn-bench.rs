//! `cairn-bench`: measurements that belong in the README, not in tests.
//!
//! * `idle-agent` — resident memory and CPU of an idle real agent (and its
//!   controller) over a window.
//! * `launch` — time from `POST /instances` to `running`, beside `docker run` plus
//!   waiting for the port, interleaved in one run.
//! * `heartbeats` — controller CPU and memory while N hollow agents (the real link and
//!   protocol, fake host facts, one QUIC connection and certificate each, all in this
//!   process) heartbeat at the configured interval.
//! * `proxy` — the same test-app container reached three ways in one run: directly
//!   (its bridge IP), through a local nginx reverse proxy with upstream keep-alive,
//!   and through Cairn's `/i/{id}/…` (controller → agent over QUIC → app). A 1 GiB
//!   download (MiB/s) and 10,000 small requests at concurrency 1 (p50/p99) and 32
//!   (requests/s), with the CPU of nginx, the controller and the agent. Needs Docker,
//!   root (the agent's iptables rules) and Debian's nginx (`apt-get install nginx-light`).
//!
//! * `datasets` — dataset push and fetch beside `rsync -a` to an rsync daemon on the
//!   same trees (about 1 GiB of 10,000 small files, and a few multi-GiB files): first
//!   push, unchanged push, fetch, and both after a 1% change; time and bytes on the
//!   wire; then launch to `running` with a 1 GiB dataset, cold and warm cache. Needs
//!   Docker, root and Debian's `rsync`.
//! * `chunk-sizes` — the FastCDC average size: chunks, manifest size, scan speed and
//!   bytes re-sent after a 1% change at 16, 64 and 256 KiB.
//! * `volumes` — users' persistent volumes beside `rsync -a --delete` to an rsync
//!   daemon on a home of about 1 GiB (`--scale` multiplies it): the first save, a
//!   save with nothing changed, a save after a 1% change, a 4 KiB insert alone, and
//!   restores on a host holding nothing (cold) and on the host that kept the copy
//!   (warm); wall time, the agent's own timing, bytes on the wire and CPU. Needs
//!   Docker, root and Debian's `rsync`.
//! * `burst` — a class arriving at once: N users (200 by default) log in and each
//!   launches one small blueprint at the same moment, on a controller and two
//!   agents sharing this machine's Docker Engine; accepted, running, failed (and
//!   why), login and launch API p50/p99, and the time until the last one runs.
//!   Needs Docker.
//!
//! Each prints a table and, with `--json FILE`, writes the figures as JSON (`--json -`
//! prints them after the table).
//! Build with `--release`; the controller, agent and test-app binaries are taken
//! from the same target directory as this one, so build them all first:
//!
//! ```text
//! cargo build --release --workspace --bins && target/release/cairn-bench proxy
//! ```

// One file per family of measurements, next to this one, and what they share.
#[path = "cairn-bench/burst.rs"]
mod burst;
#[path = "cairn-bench/common.rs"]
mod common;
#[path = "cairn-bench/data.rs"]
mod data;
#[path = "cairn-bench/volumes.rs"]
mod volumes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_agent::facts::hollow::HollowFacts;
use cairn_agent::link::{self, LinkOptions};
use cairn_tests::cluster::{controller_with_agent_using, Controller, ControllerOptions};
use cairn_tests::procstat::{self, cpu_percent};
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "cairn-bench", about = "Cairn measurements")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Also write the results as JSON to this file (`-`: print them after the table).
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
    /// Proxy overhead: one container directly, through nginx, and through Cairn.
    Proxy(ProxyArgs),
    /// Time to running of the first launch of a blueprint on a host that has never
    /// seen its image: pre-pull on, pre-pull off, and the image already cached.
    FirstLaunch {
        /// Size of the image's own (random, incompressible) layer.
        #[arg(long, default_value_t = 256)]
        image_mib: usize,
        /// Rounds; every case runs once per round with a fresh image.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Dataset push and fetch beside rsync (see the module header).
    Datasets {
        /// Where trees, the controller, the agent and the rsync daemon live (needs
        /// about 8× the trees' size free).
        #[arg(long, default_value = "/var/tmp/cairn-bench-data")]
        dir: std::path::PathBuf,
        /// Files in the large tree.
        #[arg(long, default_value_t = 2)]
        large_files: usize,
        /// GiB in the large tree.
        #[arg(long, default_value_t = 4.0)]
        large_gib: f64,
    },
    /// Users' volumes: saves and restores beside rsync (see the module header).
    Volumes {
        /// Where the home, the controller, the agents and the rsync daemon live
        /// (empty or new; needs about 8× the home's size free).
        #[arg(long, default_value = "/var/tmp/cairn-bench-volumes")]
        dir: std::path::PathBuf,
        /// Multiplies the home's file counts and total size (1.0: about 1 GiB).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// A class arriving at once: N users log in and launch together (see the module
    /// header).
    Burst {
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Concurrent container creates per agent (its `--container-slots`); the
        /// agent's default when not given.
        #[arg(long)]
        slots: Option<usize>,
        /// Give up waiting for the instances after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Chunk-size study for FastCDC (16, 64, 256 KiB averages).
    ChunkSizes {
        #[arg(long, default_value = "/var/tmp/cairn-bench-data")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 2)]
        large_files: usize,
        #[arg(long, default_value_t = 4.0)]
        large_gib: f64,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct ProxyArgs {
    /// Size of the download workload in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    download_bytes: u64,
    /// Small requests (`GET /small`) per measurement.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Concurrency of the request-rate measurement.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Rounds: every workload runs once per path per round, paths interleaved; the
    /// table shows the median of the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// nginx `worker_processes`.
    #[arg(long, default_value = "auto")]
    nginx_workers: String,
    /// nginx `proxy_buffering` (`on` is nginx's default).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    nginx_buffering: String,
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
        Cmd::Proxy(args) => proxy(args).await?,
        Cmd::FirstLaunch { image_mib, rounds } => first_launch(image_mib, rounds).await?,
        Cmd::Datasets {
            dir,
            large_files,
            large_gib,
        } => data::datasets(dir, large_files, large_gib).await?,
        Cmd::Volumes { dir, scale } => volumes::volumes(dir, scale).await?,
        Cmd::Burst {
            users,
            slots,
            timeout_secs,
        } => burst::burst(users, slots, timeout_secs).await?,
        Cmd::ChunkSizes {
            dir,
            large_files,
            large_gib,
        } => data::chunk_sizes(dir, large_files, large_gib)?,
    };
    match cli.json {
        Some(p) if p.as_os_str() == "-" => {
            println!();
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Some(p) => std::fs::write(&p, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", p.display()))?,
        None => {}
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
    let (ctl, agent, _) = controller_with_agent_using(tmp.path(), &opts, "idle").await;
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
    // Enrol every hollow host: each gets its own key and certificate.
    let t0 = Instant::now();
    let (endpoint, states) = cairn_tests::hollow::enrol(&ctl, n).await?;
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
        let (_, health) = ctl.get("/healthz").await;
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
    let (_, health) = ctl.get("/healthz").await;
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

/// Launches `blueprint` as `token` and returns the time from the request to
/// `running`; stops the instance afterwards (not timed).
async fn timed_launch(ctl: &Controller, token: &str, blueprint: &str) -> Result<f64> {
    use reqwest::Method;
    let t0 = Instant::now();
    let (s, inst) = ctl
        .request(
            Some(token),
            Method::POST,
            "/api/v1/instances",
            Some(json!({ "blueprint": blueprint })),
        )
        .await;
    if s != 201 {
        bail!("launch {blueprint}: {inst}");
    }
    let id = inst["id"].as_str().context("id")?.to_string();
    let path = format!("/api/v1/instances/{id}");
    loop {
        let (_, i) = ctl.request(Some(token), Method::GET, &path, None).await;
        match i["state"].as_str() {
            Some("running") => break,
            Some("failed") => bail!("instance failed: {i}"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("{blueprint} did not reach running");
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    ctl.request(Some(token), Method::DELETE, &path, None).await;
    loop {
        let (_, i) = ctl.request(Some(token), Method::GET, &path, None).await;
        if i["state"] == "stopped" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(ms)
}

async fn first_launch(image_mib: usize, rounds: usize) -> Result<serde_json::Value> {
    use cairn_tests::registry::{forget_pulled, unique_http_image, Registry, HTTP_PORT};
    let tmp = tempfile::tempdir()?;
    let reg = Registry::start(tmp.path(), "registry");
    let (ctl, mut agent, host) =
        controller_with_agent_using(tmp.path(), &ControllerOptions::default(), "bench").await;
    let token = ctl.admin_token.clone();
    let (mut off, mut on, mut cached, mut prepull) = (vec![], vec![], vec![], vec![]);
    let mut image_bytes = 0u64;
    for round in 0..rounds {
        // Two images this host has never seen, one per case.
        let mut refs = vec![];
        for case in ["off", "on"] {
            let local = unique_http_image(
                &format!("cairn-bench/first-{case}:{round}"),
                image_mib * 1024 * 1024,
            );
            if image_bytes == 0 {
                let size = docker_cli(&["image", "inspect", "--format", "{{.Size}}", &local])?;
                image_bytes = size.parse().unwrap_or(0);
            }
            let digest = reg.publish(&local, &format!("bench/{case}:{round}"));
            refs.push(format!("{}/bench/{case}@{digest}", reg.host()));
        }
        let blueprint = |case: &str, prepull: &str| {
            json!({"name": format!("{case}-{round}"), "image": format!("{}/bench/{case}:{round}", reg.host()),
                   "app": "http", "app_port": HTTP_PORT, "memory_mib": 64, "cpus": 0.5, "prepull": prepull})
        };
        // Pre-pull off: the launch pulls. Then the same image again: cached.
        ctl.blueprint(blueprint("off", "none")).await;
        off.push(timed_launch(&ctl, &token, &format!("off-{round}")).await?);
        cached.push(timed_launch(&ctl, &token, &format!("off-{round}")).await?);
        // Pre-pull on: the host pulls when the blueprint is saved; the launch comes
        // once the host reports the image (a course's blueprint is saved well before
        // its students arrive).
        let t0 = Instant::now();
        ctl.blueprint(blueprint("on", "all")).await;
        while !ctl.host_image_digests(&host).await.contains(&refs[1]) {
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("pre-pull of {} did not finish", refs[1]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        prepull.push(t0.elapsed().as_secs_f64() * 1000.0);
        on.push(timed_launch(&ctl, &token, &format!("on-{round}")).await?);
        for case in ["off", "on"] {
            ctl.send(
                reqwest::Method::POST,
                &format!("/api/v1/blueprints/{case}-{round}/disable"),
                None,
            )
            .await;
        }
        forget_pulled(&reg.host());
    }
    agent.kill9();
    let (m_off, m_on, m_cached, m_pre) =
        (median(&off), median(&on), median(&cached), median(&prepull));
    println!(
        "first launch on a host that never saw the image ({:.0} MiB image, {rounds} rounds, median; registry on loopback)",
        image_bytes as f64 / (1024.0 * 1024.0)
    );
    println!("| case                                   | to running (ms) | / cached |");
    println!("|----------------------------------------|----------------:|---------:|");
    println!(
        "| image cached on the host               | {m_cached:>15.1} | {:>8.2} |",
        1.0
    );
    println!(
        "| pre-pull on (pulled before the launch) | {m_on:>15.1} | {:>8.2} |",
        m_on / m_cached
    );
    println!(
        "| pre-pull off (pulled at the launch)    | {m_off:>15.1} | {:>8.2} |",
        m_off / m_cached
    );
    println!("background pre-pull, blueprint saved → host reports the image: {m_pre:.0} ms");
    println!(
        "goal: pre-pull on within 10% of cached — {}",
        if m_on <= m_cached * 1.10 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(json!({
        "image_bytes": image_bytes, "rounds": rounds,
        "cached_ms": cached, "prepull_on_ms": on, "prepull_off_ms": off, "prepull_ms": prepull,
        "median": {"cached": m_cached, "prepull_on": m_on, "prepull_off": m_off, "prepull": m_pre},
        "ratio_on_cached": m_on / m_cached, "ratio_off_cached": m_off / m_cached,
    }))
}

async fn launch(count: usize) -> Result<serde_json::Value> {
    use reqwest::Method;
    let image = cairn_tests::images::busybox_image();
    let tmp = tempfile::tempdir()?;
    let (ctl, mut agent, _) =
        controller_with_agent_using(tmp.path(), &ControllerOptions::default(), "bench").await;
    let cmd = [
        "sh",
        "-c",
        "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
    ];
    let bp = json!({"name": "bench", "image": image, "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 64, "cpus": 0.5, "command": cmd});
    let (s, b) = ctl.send(Method::POST, "/api/v1/blueprints", Some(bp)).await;
    if s != 201 {
        bail!("creating the blueprint: {b}");
    }
    let token = ctl.user("bench", "user").await;
    let mut cairn = vec![];
    let mut plain = vec![];
    for round in 0..count {
        // Cairn: request accepted → the agent reports the app answering.
        cairn.push(
            timed_launch(&ctl, &token, "bench")
                .await
                .with_context(|| format!("launch {round}"))?,
        );

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

// ----- proxy -----------------------------------------------------------------------

/// The goals of the proxy issue: latency within this factor of nginx's …
const LATENCY_GOAL: f64 = 1.5;
/// … and at least this fraction of its throughput.
const THROUGHPUT_GOAL: f64 = 0.7;

/// One way to reach the test app.
struct Route {
    name: &'static str,
    /// What the app's paths are appended to, without a trailing slash.
    base: String,
    small_url: String,
    bearer: Option<String>,
    client: reqwest::Client,
    /// Processes whose CPU is read while this route carries the load.
    procs: Vec<(&'static str, Vec<u32>)>,
}

impl Route {
    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let req = self.client.get(url);
        match &self.bearer {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }
}

/// `GET /small`, checking the answer.
async fn small(route: &Route) -> Result<()> {
    let resp = route.get(&route.small_url).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if status != 200 || &body[..] != b"ok" {
        bail!(
            "{}: GET /small answered {status}: {}",
            route.name,
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(())
}

/// Downloads `n` bytes of `/bytes?n=N`, discarding them; returns MiB/s.
async fn download(route: &Route, n: u64) -> Result<f64> {
    let t0 = Instant::now();
    let mut resp = route
        .get(&format!("{}/bytes?n={n}", route.base))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("{}: GET /bytes answered {}", route.name, resp.status());
    }
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        got += chunk.len() as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    if got != n {
        bail!(
            "{}: the download ended after {got} of {n} bytes",
            route.name
        );
    }
    Ok(n as f64 / f64::from(1u32 << 20) / secs)
}

/// `count` small requests one after another; returns the sorted latencies in µs.
async fn sequential(route: &Route, count: usize) -> Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        small(route).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// `count` small requests from `conc` keep-alive connections at once; returns
/// requests/s and the sorted latencies in µs.
async fn concurrent(route: &Arc<Route>, count: usize, conc: usize) -> Result<(f64, Vec<f64>)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (route, next) = (route.clone(), next.clone());
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(count / conc + 1);
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                small(&route).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((count as f64 / secs, all))
}

/// CPU ticks of a group of processes, summed.
fn group_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| procstat::sample(*p))
        .map(|s| s.cpu_ticks)
        .sum()
}

/// CPU readings of a route's processes at the start of a measurement.
struct CpuWindow {
    at: Instant,
    ticks: Vec<u64>,
    /// Busy ticks of the whole machine, all cores.
    machine: Option<(u64, u64)>,
}

impl CpuWindow {
    fn start(route: &Route) -> Self {
        CpuWindow {
            at: Instant::now(),
            ticks: route.procs.iter().map(|(_, p)| group_ticks(p)).collect(),
            machine: machine_jiffies(),
        }
    }

    /// Adds what each process used since `start` to `tally` under `workload`, and
    /// under `other` what the rest of the machine used.
    fn end(self, route: &Route, workload: &'static str, tally: &mut CpuTally) {
        let secs = self.at.elapsed().as_secs_f64();
        let mut ours = 0;
        for ((name, pids), before) in route.procs.iter().zip(self.ticks) {
            let used = group_ticks(pids).saturating_sub(before);
            ours += used;
            let e = tally.entry((workload, route.name, name)).or_default();
            e.0 += used;
            e.1 += secs;
        }
        if let (Some((b0, _)), Some((b1, _))) = (self.machine, machine_jiffies()) {
            let e = tally.entry((workload, route.name, "other")).or_default();
            e.0 += b1.saturating_sub(b0).saturating_sub(ours);
            e.1 += secs;
        }
    }
}

/// (workload, route, process) → (CPU ticks, wall seconds), summed over rounds.
type CpuTally = std::collections::BTreeMap<(&'static str, &'static str, &'static str), (u64, f64)>;

/// Metric → one value per round, for one route.
type Figures = std::collections::BTreeMap<&'static str, Vec<f64>>;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// The pids whose parent is `pid` (nginx's workers).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let ppid = std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.get(s.rfind(')')? + 2..)?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            ppid == Some(pid)
        })
        .collect()
}

/// Busy and total jiffies of the whole machine, from `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// How busy the whole machine is over `window`, in percent of all cores.
async fn machine_busy(window: Duration) -> f64 {
    let a = machine_jiffies();
    tokio::time::sleep(window).await;
    match (a, machine_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0,
        _ => f64::NAN,
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Fails with a build hint unless the binaries this bench starts sit next to it.
fn require_bins(names: &[&str]) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !dir.join(n).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found in {}; build every binary first: cargo build --release --workspace --bins",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(())
}

/// The nginx binary to run and its version; fails with an install hint.
fn find_nginx(name: &str) -> Result<(String, String)> {
    let mut candidates = vec![name.to_string()];
    if name == "nginx" {
        // Not on a normal user's PATH on Debian.
        candidates.push("/usr/sbin/nginx".into());
    }
    for c in candidates {
        if let Ok(out) = std::process::Command::new(&c).arg("-v").output() {
            let text = String::from_utf8_lossy(&out.stderr);
            let version = text
                .trim()
                .strip_prefix("nginx version: ")
                .unwrap_or(text.trim())
                .to_string();
            return Ok((c, version));
        }
    }
    bail!(
        "`{name}` not found: the proxy bench compares Cairn with nginx. Install it \
         (Debian/Ubuntu: apt-get install nginx-light, or nginx) or pass --nginx PATH"
    )
}

/// nginx as a child process with a generated configuration in a temporary directory.
struct Nginx {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    fn start(bin: &str, upstream: &str, args: &ProxyArgs) -> Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display().to_string();
        let port = cairn_tests::cluster::free_tcp_port();
        // Temp paths for every module this build has, so nothing touches /var/lib/nginx.
        let built = std::process::Command::new(bin).arg("-V").output()?;
        let built = String::from_utf8_lossy(&built.stderr).into_owned();
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .filter(|m| !built.contains(&format!("--without-http_{m}_module")))
            .map(|m| format!("    {m}_temp_path {d}/{m}_temp;\n"))
            .collect();
        // As root, nginx switches its workers to an unprivileged user that could not
        // enter the private temporary directory; stay root (loopback only, short-lived).
        let user = if is_root() { "user root root;" } else { "" };
        let conf = format!(
            "# Generated by cairn-bench proxy.\n\
             worker_processes {workers};\n\
             {user}\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             {temp_paths}\
             \x20   # Keep client connections for the whole run (the default closes after 1000).\n\
             \x20   keepalive_requests 1000000;\n\
             \x20   upstream app {{\n\
             \x20       server {upstream};\n\
             \x20       keepalive 64;\n\
             \x20       keepalive_requests 1000000;\n\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       location / {{\n\
             \x20           proxy_pass http://app;\n\
             \x20           proxy_http_version 1.1;\n\
             \x20           proxy_set_header Connection \"\";\n\
             \x20           proxy_buffering {buffering};\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n",
            workers = args.nginx_workers,
            buffering = args.nginx_buffering,
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, &conf)?;
        let base = |cmd: &mut std::process::Command| {
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.path().join("error.log"));
        };
        let mut test = std::process::Command::new(bin);
        base(&mut test);
        let out = test.arg("-t").output()?;
        if !out.status.success() {
            bail!(
                "nginx rejected the generated configuration:\n{}\n{conf}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut cmd = std::process::Command::new(bin);
        base(&mut cmd);
        cmd.args(["-g", "daemon off;"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {bin}"))?;
        Ok(Nginx {
            child: Some(child),
            dir,
            port,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SIGTERM: the master stops its workers; SIGKILL would orphan them.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

async fn proxy(args: ProxyArgs) -> Result<serde_json::Value> {
    use cairn_tests::docker::InstanceContainers;
    use cairn_tests::testapp::{testapp_image, PORT};
    use reqwest::Method;

    if args.rounds == 0 || args.concurrency == 0 || args.requests == 0 {
        bail!("--rounds, --concurrency and --requests must be at least 1");
    }
    require_bins(&["cairn-controller", "cairn-agent", "cairn-testapp"])?;
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: a debug build; for meaningful figures run \
             cargo build --release --workspace --bins && target/release/cairn-bench proxy"
        );
    }
    let (nginx_bin, nginx_version) = find_nginx(&args.nginx)?;
    cairn_tests::docker::docker_server_version()
        .map_err(|e| anyhow::anyhow!("the proxy bench needs a Docker Engine: {e}"))?;
    if !is_root() {
        eprintln!("warning: not root; the agent needs root for its iptables rules");
    }

    eprintln!("building (or reusing) the test-app image");
    let image = testapp_image();
    // Declared before the agent so it is dropped after it: a running agent would
    // restart a container removed under it.
    let mut containers = InstanceContainers::default();
    let tmp = tempfile::tempdir()?;
    let opts = ControllerOptions {
        heartbeat: "5s",
        lost_after: "10m",
        ..Default::default()
    };
    let (ctl, mut agent, _) = controller_with_agent_using(tmp.path(), &opts, "bench").await;
    let bp = json!({"name": "bench-proxy", "image": image, "pull": "never", "app": "http", "app_port": PORT,
        "memory_mib": 512, "cpus": 2.0});
    let (s, b) = ctl.send(Method::POST, "/api/v1/blueprints", Some(bp)).await;
    if s != 201 {
        bail!("creating the blueprint: {b}");
    }
    let token = ctl.user("bench", "user").await;
    let id = ctl.launch(&token, "bench-proxy").await;
    containers.0.push(id.clone());
    let inst = ctl
        .wait_instance(&token, &id, "running", Duration::from_secs(120))
        .await;
    let container = format!("cairn-{id}");
    let upstream = match inst["address"].as_str() {
        Some(a) => a.to_string(),
        None => {
            let ip = docker_cli(&[
                "inspect",
                "--format",
                "{{.NetworkSettings.Networks.cairn.IPAddress}}",
                &container,
            ])?;
            format!("{ip}:{PORT}")
        }
    };
    let app_pid = docker_cli(&["inspect", "--format", "{{.State.Pid}}", &container])
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p != 0);
    eprintln!("instance {id} running at {upstream}");

    let nginx = Nginx::start(&nginx_bin, &upstream, &args)?;
    let nginx_addr = format!("127.0.0.1:{}", nginx.port);
    if let Err(e) = wait_port(&nginx_addr, Duration::from_secs(10)).await {
        bail!("nginx did not start: {e}\n{}", nginx.logs());
    }

    let client = || {
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(600))
            .build()
    };
    let mut common = vec![("client", vec![std::process::id()])];
    if let Some(p) = app_pid {
        common.push(("app", vec![p]));
    }
    let direct = format!("http://{upstream}");
    let via_nginx = format!("http://{nginx_addr}");
    let via_cairn = format!("{}/i/{id}", ctl.api);
    let mut routes = vec![
        Route {
            name: "direct",
            small_url: format!("{direct}/small"),
            base: direct,
            bearer: None,
            client: client()?,
            procs: common.clone(),
        },
        Route {
            name: "nginx",
            small_url: format!("{via_nginx}/small"),
            base: via_nginx,
            bearer: None,
            client: client()?,
            procs: common.clone(),
        },
        Route {
            name: "cairn",
            small_url: format!("{via_cairn}/small"),
            base: via_cairn,
            bearer: Some(token.clone()),
            client: client()?,
            procs: common,
        },
    ];
    for r in &routes {
        small(r)
            .await
            .with_context(|| format!("first request via {}", r.name))?;
    }
    // nginx has forked its workers by now: it answered.
    let nginx_pid = nginx.pid().context("nginx pid")?;
    let mut nginx_pids = vec![nginx_pid];
    nginx_pids.extend(children_of(nginx_pid));
    routes[1].procs.push(("nginx", nginx_pids.clone()));
    routes[2]
        .procs
        .push(("controller", vec![ctl.pid().context("controller pid")?]));
    routes[2]
        .procs
        .push(("agent", vec![agent.pid().context("agent pid")?]));
    let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();

    // Everything else on the machine competes with the proxies for its cores.
    let busy_before = machine_busy(Duration::from_secs(2)).await;
    if busy_before > 15.0 {
        eprintln!(
            "warning: the machine is already {busy_before:.0}% busy (all cores) before the \
             measurements start; the figures will be noisy"
        );
    }
    let n = args.download_bytes;
    let conc = args.concurrency;
    let warm = (args.requests / 10).clamp(1, 1000);
    let mut figures: std::collections::BTreeMap<&'static str, Figures> = Default::default();
    let mut tally = CpuTally::new();
    for round in 1..=args.rounds {
        for r in &routes {
            let w = CpuWindow::start(r);
            let mib_s = download(r, n).await?;
            w.end(r, "download", &mut tally);
            eprintln!("round {round}: {:<6} download {mib_s:>8.1} MiB/s", r.name);
            let f = figures.entry(r.name).or_default();
            f.entry("download_mib_s").or_default().push(mib_s);
        }
        for r in &routes {
            sequential(r, warm).await?;
            let w = CpuWindow::start(r);
            let lat = sequential(r, args.requests).await?;
            w.end(r, "c1", &mut tally);
            let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
            let mean = lat.iter().sum::<f64>() / lat.len() as f64;
            eprintln!(
                "round {round}: {:<6} c=1    p50 {p50:>7.0} µs, p99 {p99:>7.0} µs",
                r.name
            );
            let f = figures.entry(r.name).or_default();
            f.entry("c1_p50_us").or_default().push(p50);
            f.entry("c1_p99_us").or_default().push(p99);
            f.entry("c1_mean_us").or_default().push(mean);
        }
        for r in &routes {
            concurrent(r, warm.max(conc * 10), conc).await?;
            let w = CpuWindow::start(r);
            let (rps, lat) = concurrent(r, args.requests, conc).await?;
            w.end(r, "cn", &mut tally);
            let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
            eprintln!(
                "round {round}: {:<6} c={conc:<4} {rps:>8.0} req/s, p99 {p99:>7.0} µs",
                r.name
            );
            let f = figures.entry(r.name).or_default();
            f.entry("cn_req_s").or_default().push(rps);
            f.entry("cn_p50_us").or_default().push(p50);
            f.entry("cn_p99_us").or_default().push(p99);
        }
    }
    drop(nginx);
    agent.kill9();
    drop(containers);

    let med = |route: &str, metric: &str| -> f64 {
        figures
            .get(route)
            .and_then(|f| f.get(metric))
            .map_or(f64::NAN, |v| median(v))
    };
    let size = if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    };
    let rows: [(&str, String, usize); 6] = [
        ("download_mib_s", format!("download {size}, MiB/s"), 1),
        ("c1_p50_us", "GET /small c=1, p50 µs".into(), 0),
        ("c1_p99_us", "GET /small c=1, p99 µs".into(), 0),
        ("cn_req_s", format!("GET /small c={conc}, req/s"), 0),
        ("cn_p50_us", format!("GET /small c={conc}, p50 µs"), 0),
        ("cn_p99_us", format!("GET /small c={conc}, p99 µs"), 0),
    ];
    println!(
        "proxy overhead: one test-app container (2 CPUs) directly, through {nginx_version} \
         (worker_processes {}, proxy_buffering {}, upstream keepalive 64) and through Cairn; \
         median of {} rounds, paths interleaved; {} requests per c= figure; {} cores, \
         {busy_before:.0}% busy before the start",
        args.nginx_workers,
        args.nginx_buffering,
        args.rounds,
        args.requests,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "| workload                     |     direct |      nginx |      cairn | cairn/nginx |"
    );
    println!(
        "|------------------------------|-----------:|-----------:|-----------:|------------:|"
    );
    for (key, label, prec) in &rows {
        let (d, x, c) = (med("direct", key), med("nginx", key), med("cairn", key));
        println!(
            "| {label:<28} | {d:>10.prec$} | {x:>10.prec$} | {c:>10.prec$} | {:>11.2} |",
            c / x
        );
    }

    let cpu = |workload: &str, route: &str, proc_: &str| -> Option<f64> {
        tally
            .get(&(workload, route, proc_))
            .map(|(ticks, secs)| *ticks as f64 / 100.0 / secs.max(1e-9) * 100.0)
    };
    let workloads = [
        ("download", format!("download {size}")),
        ("c1", "GET /small c=1".to_string()),
        ("cn", format!("GET /small c={conc}")),
    ];
    println!();
    println!(
        "CPU during the measurements (% of one core, averaged over the rounds; 10 ms ticks; \
         other = the rest of the machine, kernel threads included)"
    );
    println!(
        "| workload             | path   | client |    app |  nginx | controller |  agent |  other |"
    );
    println!(
        "|----------------------|--------|-------:|-------:|-------:|-----------:|-------:|-------:|"
    );
    for (w, label) in &workloads {
        for r in ["direct", "nginx", "cairn"] {
            let cell = |p: &str, width: usize| match cpu(w, r, p) {
                Some(v) => format!("{v:>width$.0}"),
                None => format!("{:>width$}", "—"),
            };
            println!(
                "| {label:<20} | {r:<6} | {} | {} | {} | {} | {} | {} |",
                cell("client", 6),
                cell("app", 6),
                cell("nginx", 6),
                cell("controller", 10),
                cell("agent", 6),
                cell("other", 6)
            );
        }
    }
    let other_max = tally
        .iter()
        .filter(|((_, _, p), _)| *p == "other")
        .map(|((w, r, p), _)| cpu(w, r, p).unwrap_or(0.0))
        .fold(0.0, f64::max);
    if other_max > 25.0 {
        println!(
            "warning: other processes used up to {other_max:.0}% of a core during the \
             measurements; the figures are disturbed, run again on a quiet machine"
        );
    }
    // CPU the proxy itself spends per unit of work.
    let cost = |workload: &str, route: &str, names: &[&str]| -> f64 {
        names
            .iter()
            .filter_map(|p| tally.get(&(workload, route, *p)))
            .map(|(t, _)| *t as f64 / 100.0)
            .sum()
    };
    let rounds = args.rounds as f64;
    let per_req = |w: &str, route: &str, names: &[&str]| {
        cost(w, route, names) / (rounds * args.requests as f64) * 1e6
    };
    let per_gib = |route: &str, names: &[&str]| {
        cost("download", route, names) / (rounds * n as f64 / f64::from(1u32 << 30))
    };
    let cairn_procs = ["controller", "agent"];
    println!(
        "proxy CPU per small request: c=1 nginx {:.0} µs, cairn {:.0} µs (controller {:.0} + agent {:.0}); \
         c={conc} nginx {:.0} µs, cairn {:.0} µs (controller {:.0} + agent {:.0})",
        per_req("c1", "nginx", &["nginx"]),
        per_req("c1", "cairn", &cairn_procs),
        per_req("c1", "cairn", &["controller"]),
        per_req("c1", "cairn", &["agent"]),
        per_req("cn", "nginx", &["nginx"]),
        per_req("cn", "cairn", &cairn_procs),
        per_req("cn", "cairn", &["controller"]),
        per_req("cn", "cairn", &["agent"]),
    );
    println!(
        "proxy CPU per GiB downloaded: nginx {:.2} s, cairn {:.2} s (controller {:.2} + agent {:.2})",
        per_gib("nginx", &["nginx"]),
        per_gib("cairn", &cairn_procs),
        per_gib("cairn", &["controller"]),
        per_gib("cairn", &["agent"]),
    );

    let ratio = |key: &str| med("cairn", key) / med("nginx", key);
    let lat = [ratio("c1_p50_us"), ratio("c1_p99_us")];
    let thr = [ratio("download_mib_s"), ratio("cn_req_s")];
    let latency_met = lat.iter().all(|r| *r <= LATENCY_GOAL);
    let throughput_met = thr.iter().all(|r| *r >= THROUGHPUT_GOAL);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!(
        "goal: latency within {LATENCY_GOAL}× of nginx — c=1 p50 {:.2}×, p99 {:.2}×: {}",
        lat[0],
        lat[1],
        verdict(latency_met)
    );
    println!(
        "goal: throughput ≥ {:.0}% of nginx — download {:.0}%, c={conc} req/s {:.0}%: {}",
        THROUGHPUT_GOAL * 100.0,
        thr[0] * 100.0,
        thr[1] * 100.0,
        verdict(throughput_met)
    );

    let route_json = |route: &str| {
        let f = figures.get(route).cloned().unwrap_or_default();
        let mut o = serde_json::Map::new();
        for (k, v) in &f {
            o.insert(k.to_string(), json!(median(v)));
            o.insert(format!("{k}_rounds"), json!(v));
        }
        if let Some(v) = f.get("download_mib_s") {
            o.insert(
                "download_mib_s_best".into(),
                json!(v.iter().copied().fold(f64::NAN, f64::max)),
            );
        }
        serde_json::Value::Object(o)
    };
    let mut cpu_json = serde_json::Map::new();
    for (w, r, p) in tally.keys() {
        cpu_json.insert(format!("{w}/{r}/{p}"), json!(cpu(w, r, p)));
    }
    Ok(json!({
        "bench": "proxy",
        "machine_busy_before_pct": busy_before, "other_cpu_max_pct": other_max,
        "download_bytes": n, "requests": args.requests, "concurrency": conc, "rounds": args.rounds,
        "nginx": {"version": nginx_version, "worker_processes": args.nginx_workers,
                  "proxy_buffering": args.nginx_buffering, "upstream_keepalive": 64},
        "direct": route_json("direct"), "nginx_path": route_json("nginx"), "cairn": route_json("cairn"),
        "ratio_cairn_nginx": {
            "download_mib_s": thr[0], "c1_p50_us": lat[0], "c1_p99_us": lat[1], "cn_req_s": thr[1],
        },
        "cpu_pct": cpu_json,
        "goals": {"latency_within_1_5x": latency_met, "throughput_at_least_70pct": throughput_met},
    }))
}
