//! `cairn-scale`: a C1M-style scale benchmark with hollow agents.
//!
//! Starts a real controller (its own process, release build), enrols N hollow hosts —
//! the real agent link and supervisor, one QUIC connection and certificate each, with
//! the in-memory container runtime — in this process, then launches M instances
//! through the REST API and waits until the controller has recorded every one as
//! `running`. It prints placements per second, launches per second end to end
//! (request accepted → agent reported running), scheduling latency (queued →
//! scheduled) and end-to-end latency percentiles, and the controller's CPU and peak
//! memory, as a table and as JSON.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/cairn-scale --hosts 1000 --instances 100000
//! ```
//!
//! With `--churn N` it measures a controller that runs for a long time instead: N
//! launches, each stopping the oldest instance first once `--alive` are up, and
//! every few seconds the controller's RSS and mean tick time (from its `/metrics`).
//! After the warm-up (the first `2 × alive` launches) both must stay flat: memory
//! and the tick follow what runs now, not everything that ever ran.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_agent::facts::hollow::HollowFacts;
use cairn_agent::link::{self, LinkOptions, WorkloadsHandle};
use cairn_agent::runtime::hollow::HollowRuntime;
use cairn_agent::runtime::Supervisor;
use cairn_tests::cluster::{Controller, ControllerOptions};
use cairn_tests::procstat;
use clap::Parser;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "cairn-scale", about = "Cairn at scale with hollow agents")]
struct Args {
    /// Hollow hosts.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Instances to launch.
    #[arg(long, default_value_t = 100_000)]
    instances: usize,
    /// How long a hollow container takes to answer after it is created.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    start_delay: Duration,
    /// Launch requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Heartbeat interval.
    #[arg(long, default_value = "5s")]
    heartbeat: String,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Where the controller keeps its state: `sled`, or `etcd` (a local etcd the
    /// run starts, Debian's `etcd-server`).
    #[arg(long, default_value = "sled", value_parser = ["sled", "etcd"])]
    store: String,
    /// Churn mode: this many launches in all, stopping the oldest instance before
    /// each launch once `--alive` are up (`--instances` is then unused).
    #[arg(long)]
    churn: Option<usize>,
    /// Churn mode: the most instances up at once.
    #[arg(long, default_value_t = 20_000)]
    alive: usize,
    /// Churn mode: seconds between samples of the controller's memory and tick.
    #[arg(long, default_value_t = 5)]
    sample_secs: u64,
}

/// Users that launch; each may run up to 1,000 instances of the blueprint.
const PER_USER: usize = 1000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let out = run(&args).await?;
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&out)?)?;
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

async fn run(args: &Args) -> Result<Value> {
    let (n, m) = (args.hosts, args.instances);
    let tmp = tempfile::tempdir()?;
    let heartbeat: &'static str = Box::leak(args.heartbeat.clone().into_boxed_str());
    let opts = ControllerOptions {
        heartbeat,
        lost_after: "10m",
        etcd: args.store == "etcd",
        ..Default::default()
    };
    let mut ctl = Controller::init(tmp.path(), &opts);
    // Every user may run a thousand instances.
    let cfg = ctl.dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg)?;
    let changed = text.replace(
        "max_per_user = 10\n",
        &format!("max_per_user = {PER_USER}\n"),
    );
    if changed == text {
        bail!("cannot raise max_per_user in {}", cfg.display());
    }
    std::fs::write(&cfg, changed)?;
    ctl.start().await;

    // Hollow hosts: enrol each with its own key and certificate.
    let t0 = Instant::now();
    let (endpoint, states) = cairn_tests::hollow::enrol(&ctl, n).await?;
    eprintln!(
        "enrolled {n} hollow hosts in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let stop = CancellationToken::new();
    for (i, state) in states {
        let sup = Supervisor::new(HollowRuntime::new(args.start_delay));
        tokio::spawn(sup.clone().run(stop.clone()));
        let lo = LinkOptions {
            workloads: Some(WorkloadsHandle(sup)),
            ..LinkOptions::default()
        };
        tokio::spawn(link::run(
            state,
            Arc::new(HollowFacts::new(i)),
            Some(endpoint.clone()),
            lo,
            stop.clone(),
        ));
    }
    let t1 = Instant::now();
    loop {
        let (_, health) = ctl.get("/healthz").await;
        if health["hosts"]["active"].as_u64().unwrap_or(0) as usize == n {
            break;
        }
        if t1.elapsed() > Duration::from_secs(300) {
            bail!("not all {n} hosts active after 300 s: {health}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("all {n} hosts active");

    // A tiny blueprint so that capacity is not what limits the run.
    let bp = json!({
        "name": "tiny", "image": "cairn-test/hollow:1", "pull": "never", "app": "http", "app_port": 8080,
        "memory_mib": 16, "cpus": 0.01, "max_instances_per_user": PER_USER,
        "max_lifetime_secs": 86400,
    });
    let (status, body) = ctl
        .send(reqwest::Method::POST, "/api/v1/blueprints", Some(bp))
        .await;
    if status != 201 {
        bail!("blueprint: {status} {body}");
    }
    if let Some(total) = args.churn {
        let out = churn(args, &ctl, total).await;
        stop.cancel();
        return out;
    }
    let users = m.div_ceil(PER_USER);
    let mut tokens = Vec::with_capacity(users);
    for u in 0..users {
        tokens.push(ctl.user(&format!("bench{u}"), "user").await);
    }
    eprintln!(
        "{users} users; launching {m} instances, {} at a time",
        args.concurrency
    );

    // Launch, and watch the controller while it works.
    let cpid = ctl.pid().context("controller pid")?;
    let watch_stop = CancellationToken::new();
    let watcher = {
        let stop = watch_stop.clone();
        tokio::spawn(async move {
            let mut samples = vec![];
            loop {
                if let Some(s) = procstat::sample(cpid) {
                    samples.push(s);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => break,
                }
            }
            if let Some(s) = procstat::sample(cpid) {
                samples.push(s);
            }
            samples
        })
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(tokens);
    let url = format!("{}/api/v1/instances", ctl.api);
    let launch_start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (http, next, tokens, url) = (http.clone(), next.clone(), tokens.clone(), url.clone());
        workers.spawn(async move {
            let mut failures = 0usize;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= m {
                    break;
                }
                let token = &tokens[k / PER_USER];
                let r = http
                    .post(&url)
                    .bearer_auth(token)
                    .json(&json!({"blueprint": "tiny"}))
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().as_u16() == 201 => {}
                    Ok(resp) => {
                        failures += 1;
                        if failures < 5 {
                            eprintln!(
                                "launch {k}: {} {}",
                                resp.status(),
                                resp.text().await.unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures < 5 {
                            eprintln!("launch {k}: {e}");
                        }
                    }
                }
            }
            failures
        });
    }
    let mut failed = 0;
    while let Some(f) = workers.join_next().await {
        failed += f?;
    }
    let accepted_secs = launch_start.elapsed().as_secs_f64();
    eprintln!(
        "{} launches accepted in {accepted_secs:.1} s ({failed} refused)",
        m - failed
    );
    let want = (m - failed) as u64;
    loop {
        let (_, health) = ctl.get("/healthz").await;
        let running = health["instances"]["running"].as_u64().unwrap_or(0);
        let failed_now = health["instances"]["failed"].as_u64().unwrap_or(0);
        if running + failed_now >= want {
            break;
        }
        if launch_start.elapsed() > Duration::from_secs(1800) {
            bail!("only {running} of {want} running after 30 min: {health}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_running_secs = launch_start.elapsed().as_secs_f64();
    watch_stop.cancel();
    let samples = watcher.await?;
    let cpu_pct = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => procstat::cpu_percent(a, b),
        _ => f64::NAN,
    };
    let peak_mib = samples.iter().map(|s| s.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    let rss_mib = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0;

    // The controller's own timestamps for every transition.
    let list: Vec<Value> = http
        .get(format!("{}/api/v1/instances?all=true", ctl.api))
        .bearer_auth(&ctl.admin_token)
        .send()
        .await?
        .json()
        .await?;
    let at = |i: &Value, state: &str| {
        i["transitions"].as_array().and_then(|ts| {
            ts.iter()
                .find(|t| t["state"] == state)
                .and_then(|t| t["at_ms"].as_u64())
        })
    };
    let (mut sched, mut e2e) = (vec![], vec![]);
    let (mut first_q, mut last_s, mut last_r) = (u64::MAX, 0u64, 0u64);
    let mut running = 0usize;
    for i in &list {
        let (Some(q), Some(s)) = (at(i, "queued"), at(i, "scheduled")) else {
            continue;
        };
        first_q = first_q.min(q);
        last_s = last_s.max(s);
        sched.push((s - q) as f64);
        if let Some(r) = at(i, "running") {
            running += 1;
            last_r = last_r.max(r);
            e2e.push((r - q) as f64);
        }
    }
    sched.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    // Where the time between placement and running goes, phase by phase.
    let phases = ["scheduled", "preparing", "starting", "running"];
    let mut per_phase = vec![];
    for w in phases.windows(2) {
        let mut d: Vec<f64> = list
            .iter()
            .filter_map(|i| Some((at(i, w[1])? as f64) - (at(i, w[0])? as f64)))
            .collect();
        d.sort_by(f64::total_cmp);
        per_phase.push(json!({"from": w[0], "to": w[1], "p50_ms": percentile(&d, 0.5), "p99_ms": percentile(&d, 0.99)}));
    }
    eprintln!("phases: {}", serde_json::to_string(&per_phase)?);
    let place_rate = sched.len() as f64 / ((last_s.saturating_sub(first_q)) as f64 / 1000.0);
    let e2e_rate = running as f64 / ((last_r.saturating_sub(first_q)) as f64 / 1000.0);
    stop.cancel();

    println!();
    println!(
        "{n} hollow hosts, {m} instances, start delay {:?}, {} launches in flight, state on {}",
        args.start_delay, args.concurrency, args.store
    );
    println!("| measure                                   |        value |");
    println!("|-------------------------------------------|-------------:|");
    println!("| placements per second                     | {place_rate:>12.0} |");
    println!("| launches per second, accepted → running   | {e2e_rate:>12.0} |");
    println!(
        "| scheduling latency p50 / p99 (ms)         | {:>5.0} / {:>4.0} |",
        percentile(&sched, 0.5),
        percentile(&sched, 0.99)
    );
    println!(
        "| end-to-end latency p50 / p99 (ms)         | {:>5.0} / {:>4.0} |",
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.99)
    );
    println!("| all accepted after (s)                    | {accepted_secs:>12.1} |");
    println!("| all running after (s)                     | {all_running_secs:>12.1} |");
    println!("| controller CPU (% of one core, average)   | {cpu_pct:>12.0} |");
    println!("| controller RSS max / peak (MiB)           | {rss_mib:>5.0} / {peak_mib:>4.0} |");
    println!("| refused launches                          | {failed:>12} |");
    println!(
        "Goal (C1M rate on 2 cores): > 3,750/s end to end, scheduling p99 < 50 ms, peak < 1 GiB."
    );
    Ok(json!({
        "bench": "scale", "store": args.store, "hosts": n, "instances": m, "start_delay_ms": args.start_delay.as_millis() as u64,
        "concurrency": args.concurrency,
        "placements_per_s": place_rate, "launches_per_s_end_to_end": e2e_rate,
        "scheduling_ms": {"p50": percentile(&sched, 0.5), "p99": percentile(&sched, 0.99)},
        "end_to_end_ms": {"p50": percentile(&e2e, 0.5), "p99": percentile(&e2e, 0.99)},
        "accepted_secs": accepted_secs, "all_running_secs": all_running_secs,
        "controller": {"cpu_pct": cpu_pct, "rss_mib": rss_mib, "peak_rss_mib": peak_mib},
        "refused": failed, "running": running,
    }))
}

/// One sample of the churn run.
struct ChurnSample {
    secs: f64,
    launched: usize,
    alive: usize,
    rss_mib: f64,
    /// Mean tick time over the window since the previous sample.
    tick_ms: f64,
}

/// The sum and count of the controller's `cairn_tick_seconds` histogram.
async fn tick_totals(http: &reqwest::Client, ctl: &Controller) -> Result<(f64, f64)> {
    let text = http
        .get(format!("{}/metrics", ctl.api))
        .bearer_auth(&ctl.admin_token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let value = |series: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    match (
        value("cairn_tick_seconds_sum"),
        value("cairn_tick_seconds_count"),
    ) {
        (Some(sum), Some(count)) => Ok((sum, count)),
        _ => bail!("the controller's /metrics has no cairn_tick_seconds"),
    }
}

/// Launches `total` instances, never more than `args.alive` up: once that many
/// are, each launch first stops the oldest (as its owner). Samples the
/// controller's RSS and tick time meanwhile and compares the first sample after
/// the warm-up with the last.
async fn churn(args: &Args, ctl: &Controller, total: usize) -> Result<Value> {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    let alive_max = args.alive.max(1);
    // Twice the users the live instances need: stopping instances may still count
    // against their owner's limit for a moment.
    let users = 2 * alive_max.div_ceil(PER_USER);
    let mut tokens = Vec::with_capacity(users);
    for u in 0..users {
        tokens.push(ctl.user(&format!("churn{u}"), "user").await);
    }
    eprintln!(
        "{users} users; {total} launches, at most {alive_max} up, {} at a time",
        args.concurrency
    );
    let cpid = ctl.pid().context("controller pid")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency + 1)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let launched = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let up: Arc<Mutex<VecDeque<(String, usize)>>> = Arc::default();
    let tokens = Arc::new(tokens);
    let base = ctl.api.clone();
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (http, next, launched, refused, up, tokens, base) = (
            http.clone(),
            next.clone(),
            launched.clone(),
            refused.clone(),
            up.clone(),
            tokens.clone(),
            base.clone(),
        );
        workers.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let oldest = {
                    let mut up = up.lock().unwrap_or_else(|p| p.into_inner());
                    if up.len() >= alive_max {
                        up.pop_front()
                    } else {
                        None
                    }
                };
                if let Some((id, owner)) = oldest {
                    let r = http
                        .delete(format!("{base}/api/v1/instances/{id}"))
                        .bearer_auth(&tokens[owner])
                        .send()
                        .await?;
                    if !r.status().is_success() {
                        bail!("stopping {id}: {} {}", r.status(), r.text().await?);
                    }
                }
                let user = k % tokens.len();
                let r = http
                    .post(format!("{base}/api/v1/instances"))
                    .bearer_auth(&tokens[user])
                    .json(&json!({"blueprint": "tiny"}))
                    .send()
                    .await?;
                if r.status().as_u16() != 201 {
                    if refused.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("launch {k}: {} {}", r.status(), r.text().await?);
                    }
                    continue;
                }
                let v: Value = r.json().await?;
                let id = v["id"].as_str().context("launch answer without an id")?;
                up.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((id.to_string(), user));
                launched.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Sample until every worker is done.
    let mut samples: Vec<ChurnSample> = vec![];
    let mut last_tick = tick_totals(&http, ctl).await?;
    let mut done = false;
    println!("| s | launched | up | controller RSS (MiB) | mean tick (ms) |");
    println!("|---:|---:|---:|---:|---:|");
    while !done {
        let deadline = tokio::time::sleep(Duration::from_secs(args.sample_secs));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                r = workers.join_next() => match r {
                    Some(r) => r??,
                    None => { done = true; break; }
                },
            }
        }
        let ticks = tick_totals(&http, ctl).await?;
        let tick_ms = if ticks.1 > last_tick.1 {
            (ticks.0 - last_tick.0) / (ticks.1 - last_tick.1) * 1000.0
        } else {
            f64::NAN
        };
        last_tick = ticks;
        let rss_mib = procstat::sample(cpid).map_or(f64::NAN, |s| s.rss_kib as f64 / 1024.0);
        let sample = ChurnSample {
            secs: start.elapsed().as_secs_f64(),
            launched: launched.load(Ordering::Relaxed),
            alive: up.lock().unwrap_or_else(|p| p.into_inner()).len(),
            rss_mib,
            tick_ms,
        };
        println!(
            "| {:.0} | {} | {} | {:.0} | {:.3} |",
            sample.secs, sample.launched, sample.alive, sample.rss_mib, sample.tick_ms
        );
        samples.push(sample);
    }
    let secs = start.elapsed().as_secs_f64();
    let n = launched.load(Ordering::Relaxed);
    // Warm: the first sample once twice the live set has been launched (every
    // instance up has replaced one that ran before); compared with the last.
    let warm = samples.iter().position(|s| s.launched >= 2 * alive_max);
    let (first, last) = match warm {
        Some(w) if w + 1 < samples.len() => (&samples[w], &samples[samples.len() - 1]),
        _ => bail!("the run ended before it warmed up ({n} launches, {} samples); launch more than {} or sample more often", samples.len(), 2 * alive_max),
    };
    let rss_change = last.rss_mib / first.rss_mib - 1.0;
    // Tick means are averaged over the warm part's first and last quarter: one
    // window's mean jumps with whatever else the machine did in those seconds.
    let warm_part = &samples[warm.unwrap_or(0)..];
    let q = (warm_part.len() / 4).max(1);
    let mean = |s: &[ChurnSample]| {
        let v: Vec<f64> = s
            .iter()
            .map(|s| s.tick_ms)
            .filter(|t| t.is_finite())
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (tick_early, tick_late) = (
        mean(&warm_part[..q]),
        mean(&warm_part[warm_part.len() - q..]),
    );
    let tick_change = tick_late / tick_early - 1.0;
    println!();
    println!(
        "churn: {n} launches ({} refused) in {secs:.0} s ({:.0}/s), at most {alive_max} up, state on {}",
        refused.load(Ordering::Relaxed),
        n as f64 / secs,
        args.store
    );
    println!(
        "after warm-up ({:.0} s, {} launched): RSS {:.0} → {:.0} MiB ({:+.1}%), mean tick {:.3} → {:.3} ms ({:+.1}%); goal: both within ±10%",
        first.secs, first.launched, first.rss_mib, last.rss_mib, rss_change * 100.0,
        tick_early, tick_late, tick_change * 100.0
    );
    Ok(json!({
        "bench": "scale-churn", "store": args.store, "hosts": args.hosts, "launches": n,
        "refused": refused.load(Ordering::Relaxed), "alive": alive_max, "secs": secs,
        "warm": {"secs": first.secs, "launched": first.launched},
        "rss_mib": {"warm": first.rss_mib, "end": last.rss_mib, "change": rss_change},
        "tick_ms": {"warm": tick_early, "end": tick_late, "change": tick_change},
        "samples": samples.iter().map(|s| json!({"secs": s.secs, "launched": s.launched, "alive": s.alive, "rss_mib": s.rss_mib, "tick_ms": s.tick_ms})).collect::<Vec<_>>(),
    }))
}
