//! `cairn-bench volumes`: users' persistent volumes (issue 13) beside
//! `rsync -a --delete` to an rsync daemon (Debian's `rsync`), on the same home tree,
//! in one run, on loopback.
//!
//! Home (deterministic pseudo-random, incompressible bytes), about 1 GiB at
//! `--scale 1`: 10,000 text-sized files of 512 B–64 KiB (log-uniform) in 100
//! directories, 40 binaries of 1–8 MiB, and three large files that make up the
//! rest. `--scale` multiplies the counts and the total (a quick run: `0.1`).
//!
//! Steps, Cairn then rsync for each:
//! 1. **initial save** — an instance on host A with a new volume; the home is
//!    written into its copy; the stop's final save. rsync: the first
//!    `rsync -a --delete` of the home to the daemon (and again with `--fsync`,
//!    since Cairn's save is durable when acknowledged and rsync's is not).
//! 2. **no-change save** — launched again on A (the host kept the copy), stopped
//!    with nothing changed. rsync: the same command again.
//! 3. **1% save** — launched again on A, about 1% of the bytes changed the ways a
//!    home changes (small files rewritten, a 4 KiB insert in the middle of a large
//!    file, appends, deletions, new files), stopped. rsync: after the same change
//!    to its source.
//! 4. **4 KiB insert alone** — once more on A, only a 4 KiB insert in the middle of
//!    another large file: what shifted bytes cost (content-defined chunks re-send
//!    the chunk or two around the insert, not the rest of the file).
//! 5. **cold restore** — a launch on host B, which holds nothing: the head is
//!    assembled from fetched chunks. rsync: from the daemon into an empty directory.
//! 6. **warm restore** — stopped on B with no change, launched on B again (the host
//!    kept the copy of the head). rsync: from the daemon over the previous copy.
//!
//! Measured for each step: wall time (Cairn: the API, from the stop request to
//! `stopped`, or from the launch request to `running`, which includes Docker
//! stopping or starting the container; rsync: the client's run), the agent's own
//! timing of the save or restore (its `volume saved` / `volume restored` log
//! lines), bytes on the wire (the loopback interface's transmit counter, so each
//! protocol's overhead counts, and for Cairn also its API polls and heartbeats),
//! and CPU seconds (Cairn: controller and both agents; rsync: the client and the
//! daemon with the processes it forks per connection). Every step starts after a
//! `sync`. The restored trees are compared with the source, byte for byte.
//!
//! The bench writes the home straight into the instance's copy on the host (as
//! root, while the container runs), as a user's work would land there.
//!
//! Needs Docker, root and Debian's `rsync`; the controller and agent binaries are
//! the release ones next to this one:
//! `cargo build --release --workspace --bins && target/release/cairn-bench volumes`
//! (`--scale 0.1` for a quick run; `--dir` must be empty or new).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_tests::cluster::{start_agent_labelled, Agent, Controller, ControllerOptions};
use cairn_tests::docker::InstanceContainers;
use reqwest::Method;
use serde_json::{json, Value};

use super::common::{lo_tx_bytes, mib, noise, rsync_with, settle, write_file, RsyncDaemon};

const WORK: &str = "/home/user/work";
const VOLUME: &str = "home";
const INSERT: usize = 4096;
/// Linux reports process times in USER_HZ ticks, 100 a second.
const TICKS: f64 = 100.0;

/// The home tree, and how it changes.
#[derive(Debug, Clone)]
struct Home {
    /// (relative path, size) of the text-sized files, the binaries, the large files.
    small: Vec<(String, u64)>,
    bins: Vec<(String, u64)>,
    large: Vec<(String, u64)>,
}

/// What a change wrote: the bytes a perfect tool would send.
#[derive(Debug, Default, Clone, Copy)]
struct Changed {
    bytes: u64,
    rewritten: usize,
    appended: usize,
    deleted: usize,
    created: usize,
}

/// A fixed xorshift sequence, so every run builds the same tree.
struct Seq(u64);

impl Seq {
    /// The next value in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 1_000_000) as f64 / 1_000_000.0
    }
}

impl Home {
    fn new(scale: f64) -> Self {
        let count = |n: f64| ((n * scale).round() as usize).max(1);
        let mut seq = Seq(0x2545_f491_4f6c_dd1d);
        let dirs = count(100.0);
        let small: Vec<_> = (0..count(10_000.0))
            .map(|i| {
                let size = 2f64.powf(9.0 + seq.unit() * 7.0) as u64; // 512 B – 64 KiB
                (format!("notes/d{:03}/n{i:05}.txt", i % dirs), size)
            })
            .collect();
        let bins: Vec<_> = (0..count(40.0))
            .map(|i| {
                let size = ((1.0 + seq.unit() * 7.0) * (1u64 << 20) as f64) as u64;
                (format!("models/m{i:02}.bin"), size)
            })
            .collect();
        let so_far: u64 = small.iter().chain(&bins).map(|(_, s)| s).sum();
        // Three large files (4:5:6) make up the rest of the total.
        let rest = ((scale * (1u64 << 30) as f64) as u64).saturating_sub(so_far);
        let unit = (rest / 15).max(1 << 18);
        let large = (0..3u64)
            .map(|i| (format!("data/big{i}.bin"), unit * (4 + i)))
            .collect();
        Home { small, bins, large }
    }

    fn total(&self) -> u64 {
        self.entries().map(|(_, s)| s).sum()
    }

    fn files(&self) -> usize {
        self.small.len() + self.bins.len() + self.large.len()
    }

    fn entries(&self) -> impl Iterator<Item = &(String, u64)> {
        self.small.iter().chain(&self.bins).chain(&self.large)
    }

    fn write(&self, root: &Path) -> Result<()> {
        for (path, size) in self.entries() {
            let p = root.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            write_file(&p, &format!("home/{path}"), *size)?;
        }
        Ok(())
    }

    /// Changes about 1% of the bytes, the ways work changes a home: a 4 KiB insert
    /// in the middle of the first large file, appends to two binaries and the
    /// second large file, every 97th small file and the last binary deleted, new
    /// small files, and whole small files rewritten for the rest. Deterministic:
    /// applied to two copies of the home, it leaves them equal.
    fn change_one_percent(&self, root: &Path) -> Result<Changed> {
        let target = self.total() / 100;
        let mut c = Changed::default();
        insert_middle(&root.join(&self.large[0].0), &noise("insert/1", INSERT))?;
        c.bytes += INSERT as u64;
        let append = target / 20;
        for (path, _) in self.bins.iter().take(2).chain(self.large.get(1)) {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(root.join(path))
                .with_context(|| format!("appending to {path}"))?;
            f.write_all(&noise(&format!("append/{path}"), append as usize))?;
            c.bytes += append;
            c.appended += 1;
        }
        let mut gone: HashSet<&str> = self
            .small
            .iter()
            .skip(5)
            .step_by(97)
            .map(|(p, _)| p.as_str())
            .collect();
        if self.bins.len() > 2 {
            gone.extend(self.bins.last().map(|(p, _)| p.as_str()));
        }
        for path in &gone {
            std::fs::remove_file(root.join(path)).with_context(|| format!("deleting {path}"))?;
        }
        c.deleted = gone.len();
        let new_dir = root.join("notes/new");
        std::fs::create_dir_all(&new_dir)?;
        let mut made = 0;
        while made < target / 4 {
            let size = self.small[c.created % self.small.len()].1;
            let name = format!("n{:05}.txt", c.created);
            write_file(&new_dir.join(&name), &format!("new/{name}"), size)?;
            made += size;
            c.created += 1;
        }
        c.bytes += made;
        for (path, size) in self.small.iter().step_by(13) {
            if c.bytes + size > target {
                break;
            }
            if gone.contains(path.as_str()) {
                continue;
            }
            write_file(&root.join(path), &format!("rewrite/{path}"), *size)?;
            c.bytes += size;
            c.rewritten += 1;
        }
        Ok(c)
    }

    /// A 4 KiB insert in the middle of the third large file, alone.
    fn insert_alone(&self, root: &Path) -> Result<u64> {
        insert_middle(&root.join(&self.large[2].0), &noise("insert/2", INSERT))?;
        Ok(INSERT as u64)
    }
}

/// Inserts `bytes` at the middle of the file, shifting what follows.
fn insert_middle(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let at = f.metadata()?.len() / 2;
    let mut tail = vec![];
    f.seek(SeekFrom::Start(at))?;
    f.read_to_end(&mut tail)?;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(bytes)?;
    f.write_all(&tail)?;
    Ok(())
}

/// Files, bytes and a digest of every path, kind, size and content under `root`,
/// to check that a restore gave back the tree.
fn digest(root: &Path) -> Result<(u64, u64, String)> {
    fn walk(root: &Path, rel: &Path, h: &mut blake3::Hasher, n: &mut (u64, u64)) -> Result<()> {
        let dir = root.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let p = root.join(&rel);
            let md = std::fs::symlink_metadata(&p)?;
            h.update(rel.as_os_str().as_encoded_bytes());
            if md.is_dir() {
                h.update(b"\0dir\0");
                walk(root, &rel, h, n)?;
            } else {
                h.update(format!("\0file {}\0", md.len()).as_bytes());
                let mut f = std::fs::File::open(&p)?;
                std::io::copy(&mut f, h)?;
                n.0 += 1;
                n.1 += md.len();
            }
        }
        Ok(())
    }
    let mut h = blake3::Hasher::new();
    let mut n = (0, 0);
    walk(root, Path::new(""), &mut h, &mut n)?;
    Ok((n.0, n.1, h.finalize().to_hex().to_string()))
}

/// CPU seconds of a process: its own, and that of the children it has waited for.
fn cpu_secs(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces; count fields after its closing paren.
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .context("parsing /proc/PID/stat")?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11) // to utime, stime, cutime, cstime
        .take(4)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing /proc/PID/stat")?;
    ensure!(f.len() == 4, "short /proc/{pid}/stat");
    Ok(((f[0] + f[1]) as f64 / TICKS, (f[2] + f[3]) as f64 / TICKS))
}

/// Waits until the rsync daemon has reaped the processes it forked for a
/// connection, so their CPU time is in its children's counters.
fn rsync_idle(daemon: &RsyncDaemon) -> Result<()> {
    let pid = daemon.pid();
    let path = format!("/proc/{pid}/task/{pid}/children");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .is_empty()
    {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the rsync daemon still has children after 30 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// What a step cost.
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    secs: f64,
    wire: u64,
    cpu: f64,
}

/// Runs `f` after a `sync`, timing it and counting loopback bytes and the CPU
/// seconds `cpu` reports.
async fn metered<T>(
    cpu: impl Fn() -> Result<f64>,
    f: impl Future<Output = Result<T>>,
) -> Result<(Cost, T)> {
    settle()?;
    let cpu0 = cpu()?;
    let before = lo_tx_bytes()?;
    let t0 = Instant::now();
    let out = f.await?;
    let secs = t0.elapsed().as_secs_f64();
    let wire = lo_tx_bytes()?.saturating_sub(before);
    let cpu = cpu()? - cpu0;
    Ok((Cost { secs, wire, cpu }, out))
}

/// The agent's own record of a save or restore (its log line).
#[derive(Debug, Default, Clone)]
struct Event {
    secs: f64,
    /// `bytes` of a save (chunk payload sent), `fetched_bytes` of a restore.
    bytes: u64,
    /// A restore's `how`, a save's `outcome`.
    how: String,
    files_read: Option<u64>,
}

/// `key=value` of a tracing fmt line (quoted values unquoted).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = line.get(at..)?;
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

/// The agent's `volume saved` or `volume restored` line for instance `id`.
async fn agent_event(agent: &Agent, message: &str, id: &str) -> Result<Event> {
    let needle = format!(" {message} instance={id} ");
    let t0 = Instant::now();
    loop {
        let log = agent.log_text();
        if let Some(line) = log.lines().rev().find(|l| l.contains(&needle)) {
            let num = |k: &str| -> Result<u64> {
                field(line, k)
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("no {k} in {line:?}"))
            };
            let (bytes, how) = if message == "volume saved" {
                let outcome = line
                    .split(" outcome=")
                    .nth(1)
                    .and_then(|r| r.split(" files_read=").next())
                    .unwrap_or_default();
                (num("bytes")?, outcome.to_string())
            } else {
                let how = field(line, "how").unwrap_or_default();
                (num("fetched_bytes")?, how.to_string())
            };
            return Ok(Event {
                secs: num("elapsed_ms")? as f64 / 1000.0,
                bytes,
                how,
                files_read: num("files_read").ok(),
            });
        }
        // The line is written before the host reports, but the log is a file.
        if t0.elapsed() > Duration::from_secs(5) {
            bail!("no `{message}` line for {id} in agent {}'s log", agent.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until instance `id` is in `state`; fails on `failed` or a failing save.
async fn wait_state(ctl: &Controller, token: &str, id: &str, state: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let i = ctl.instance(token, id).await;
        if i["state"] == state {
            return Ok(());
        }
        let reason = i["state_reason"].as_str().unwrap_or_default();
        if i["state"] == "failed" || reason.contains("save failed") {
            bail!("instance {id}: {i}");
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("instance {id} not {state} after 30 min: {i}");
        }
        // Often at first (short steps are timed to a few ms), then every 100 ms at
        // most: each poll is loopback traffic that the wire column counts.
        let every = (t0.elapsed() / 50).clamp(Duration::from_millis(5), Duration::from_millis(100));
        tokio::time::sleep(every).await;
    }
}

/// Launches `blueprint` with the volume and waits until it runs; returns its id.
async fn launch(
    ctl: &Controller,
    token: &str,
    blueprint: &str,
    containers: &mut InstanceContainers,
) -> Result<String> {
    let (s, inst) = ctl
        .request(
            Some(token),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": blueprint, "volume": VOLUME})),
        )
        .await;
    ensure!(s == 201, "launch {blueprint}: {s} {inst}");
    let id = inst["id"].as_str().context("instance id")?.to_string();
    containers.0.push(id.clone());
    wait_state(ctl, token, &id, "running").await?;
    Ok(id)
}

/// Stops instance `id` and waits until it is `stopped` (its final save done).
async fn stop(ctl: &Controller, token: &str, id: &str) -> Result<()> {
    let (s, b) = ctl
        .request(
            Some(token),
            Method::DELETE,
            &format!("/api/v1/instances/{id}"),
            None,
        )
        .await;
    ensure!(s == 202, "stop {id}: {s} {b}");
    wait_state(ctl, token, id, "stopped").await
}

/// The blueprint pinned to `site`: busybox httpd behind a shell that exits on
/// SIGTERM (httpd as PID 1 ignores it, and every stop would wait Docker's 10 s).
async fn blueprint(ctl: &Controller, site: &str) -> Result<()> {
    let spec = json!({
        "name": format!("vol-{site}"), "image": cairn_tests::images::busybox_image(),
        "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 64, "cpus": 0.5,
        "max_instances_per_user": 5,
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && \
                     trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"],
        "volume": {"path": WORK, "checkpoint_minutes": 0, "owner": "0:0"},
        "placement": {"site": site},
    });
    let (s, b) = ctl
        .send(Method::POST, "/api/v1/blueprints", Some(spec))
        .await;
    ensure!(s == 201, "creating blueprint vol-{site}: {s} {b}");
    Ok(())
}

/// `rsync ARGS FROM TO` as a future, for [`metered`].
async fn rsync(args: &[&str], from: &str, to: &str) -> Result<()> {
    rsync_with(args, from, to)
}

/// One line of the table.
#[derive(Debug, Clone)]
struct Row {
    step: &'static str,
    cairn: Cost,
    agent: Event,
    rsync: Cost,
    /// The goal's text and whether it was met (agent's timing, API's timing).
    goal: Option<Goal>,
}

#[derive(Debug, Clone)]
struct Goal {
    text: String,
    agent: bool,
    api: bool,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn met(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "missed"
    }
}

impl Row {
    fn markdown(&self) -> String {
        let goal = self.goal.as_ref().map_or("—".to_string(), |g| {
            format!("{}: agent {}, API {}", g.text, met(g.agent), met(g.api))
        });
        format!(
            "| {:<28} | {:>11.2} | {:>13.2} | {:>7.2} | {:>9.2} | {:>11.2} | {:>9.1} | {:>9.1} | {:>11.2} | {:>11.2} | {goal} |",
            self.step,
            self.cairn.secs,
            self.agent.secs,
            self.rsync.secs,
            ratio(self.cairn.secs, self.rsync.secs),
            ratio(self.agent.secs, self.rsync.secs),
            mib(self.cairn.wire),
            mib(self.rsync.wire),
            self.cairn.cpu,
            self.rsync.cpu,
        )
    }

    fn json(&self) -> Value {
        json!({
            "step": self.step,
            "cairn_api_s": self.cairn.secs, "cairn_agent_s": self.agent.secs,
            "cairn_wire": self.cairn.wire, "cairn_agent_bytes": self.agent.bytes,
            "cairn_how": self.agent.how, "cairn_files_read": self.agent.files_read,
            "cairn_cpu_s": self.cairn.cpu,
            "rsync_s": self.rsync.secs, "rsync_wire": self.rsync.wire, "rsync_cpu_s": self.rsync.cpu,
            "goal": self.goal.as_ref().map(|g| json!({"text": g.text, "met_agent": g.agent, "met_api": g.api})),
        })
    }
}

/// The whole comparison.
pub async fn volumes(dir: PathBuf, scale: f64) -> Result<Value> {
    ensure!(scale > 0.0 && scale.is_finite(), "--scale must be positive");
    // Controller, agents, daemon and trees all live under `dir`: one disk.
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    ensure!(
        std::fs::read_dir(&dir)?.next().is_none(),
        "{} is not empty; give an empty or new directory",
        dir.display()
    );
    let mut ctl = Controller::init(&dir, &ControllerOptions::default());
    ctl.start().await;
    let a = start_agent_labelled(&ctl, &dir, "vol-a", "site=a").await;
    let b = start_agent_labelled(&ctl, &dir, "vol-b", "site=b").await;
    blueprint(&ctl, "a").await?;
    blueprint(&ctl, "b").await?;
    let alice = ctl.user("alice", "user").await;
    let daemon = RsyncDaemon::start(&dir.join("rsyncd"))?;
    let mut containers = InstanceContainers::default();

    let pids = [
        ctl.pid().context("controller pid")?,
        a.pid().context("agent pid")?,
        b.pid().context("agent pid")?,
    ];
    let cairn_cpu = || -> Result<f64> {
        let mut sum = 0.0;
        for p in pids {
            let (own, children) = cpu_secs(p)?;
            sum += own + children;
        }
        Ok(sum)
    };
    let me = std::process::id();
    let rsync_cpu = || -> Result<f64> {
        rsync_idle(&daemon)?;
        let (own, children) = cpu_secs(daemon.pid())?;
        // The client: a child of this process, waited for.
        Ok(own + children + cpu_secs(me)?.1)
    };
    let url = daemon.url("vol");
    let url_fsync = daemon.url("vol-fsync");
    let copy_on =
        |agent: &Agent, id: &str| agent.state_dir.join("volumes/work").join(id).join("files");

    let home = Home::new(scale);
    let src = dir.join("home");
    let from = format!("{}/", src.display());
    eprintln!(
        "writing the home: {} files, {:.0} MiB",
        home.files(),
        mib(home.total())
    );
    home.write(&src)?;
    let mut rows: Vec<Row> = vec![];
    let mut warm_a = vec![];

    // 1. Initial save.
    let id = launch(&ctl, &alice, "vol-a", &mut containers).await?;
    let copy = copy_on(&a, &id);
    ensure!(copy.is_dir(), "no copy at {}", copy.display());
    let cp = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(&copy)
        .status()
        .context("running cp")?;
    ensure!(cp.success(), "cp -a into the copy: {cp}");
    eprintln!("1. initial save");
    let (c, ()) = metered(cairn_cpu, stop(&ctl, &alice, &id)).await?;
    let ev = agent_event(&a, "volume saved", &id).await?;
    let (r, ()) = metered(rsync_cpu, rsync(&["-a", "--delete"], &from, &url)).await?;
    let goal = Goal {
        text: "≤ rsync".into(),
        agent: ev.secs <= r.secs,
        api: c.secs <= r.secs,
    };
    rows.push(Row {
        step: "initial save",
        cairn: c,
        agent: ev.clone(),
        rsync: r,
        goal: Some(goal),
    });
    let (rf, ()) = metered(
        rsync_cpu,
        rsync(&["-a", "--delete", "--fsync"], &from, &url_fsync),
    )
    .await?;
    rows.push(Row {
        step: "initial save (rsync --fsync)",
        cairn: c,
        agent: ev,
        rsync: rf,
        goal: Some(Goal {
            text: "≤ rsync".into(),
            agent: rows[0].agent.secs <= rf.secs,
            api: c.secs <= rf.secs,
        }),
    });

    // 2. No-change save.
    let id = launch(&ctl, &alice, "vol-a", &mut containers).await?;
    warm_a.push(agent_event(&a, "volume restored", &id).await?);
    eprintln!("2. no-change save");
    let (c, ()) = metered(cairn_cpu, stop(&ctl, &alice, &id)).await?;
    let ev = agent_event(&a, "volume saved", &id).await?;
    let (r, ()) = metered(rsync_cpu, rsync(&["-a", "--delete"], &from, &url)).await?;
    rows.push(Row {
        step: "no-change save",
        goal: Some(Goal {
            text: "< 0.25 s".into(),
            agent: ev.secs < 0.25,
            api: c.secs < 0.25,
        }),
        cairn: c,
        agent: ev,
        rsync: r,
    });

    // 3. About 1% changed.
    let id = launch(&ctl, &alice, "vol-a", &mut containers).await?;
    warm_a.push(agent_event(&a, "volume restored", &id).await?);
    let changed = home.change_one_percent(&copy_on(&a, &id))?;
    home.change_one_percent(&src)?;
    eprintln!("3. 1% save ({changed:?})");
    let (c, ()) = metered(cairn_cpu, stop(&ctl, &alice, &id)).await?;
    let ev = agent_event(&a, "volume saved", &id).await?;
    let (r, ()) = metered(rsync_cpu, rsync(&["-a", "--delete"], &from, &url)).await?;
    let wire_ok = c.wire as f64 <= 1.2 * changed.bytes as f64;
    rows.push(Row {
        step: "1% save",
        goal: Some(Goal {
            text: format!(
                "≤ rsync, wire ≤ 1.2× changed ({:.2}×: {})",
                ratio(c.wire as f64, changed.bytes as f64),
                met(wire_ok)
            ),
            agent: ev.secs <= r.secs && wire_ok,
            api: c.secs <= r.secs && wire_ok,
        }),
        cairn: c,
        agent: ev,
        rsync: r,
    });

    // 4. A 4 KiB insert alone.
    let id = launch(&ctl, &alice, "vol-a", &mut containers).await?;
    warm_a.push(agent_event(&a, "volume restored", &id).await?);
    let inserted = home.insert_alone(&copy_on(&a, &id))?;
    home.insert_alone(&src)?;
    eprintln!("4. 4 KiB insert alone");
    let (c, ()) = metered(cairn_cpu, stop(&ctl, &alice, &id)).await?;
    let ev = agent_event(&a, "volume saved", &id).await?;
    let (r, ()) = metered(rsync_cpu, rsync(&["-a", "--delete"], &from, &url)).await?;
    rows.push(Row {
        step: "4 KiB insert alone",
        cairn: c,
        agent: ev,
        rsync: r,
        goal: None,
    });
    let (_, _, want) = digest(&src)?;

    // 5. Cold restore on B.
    eprintln!("5. cold restore");
    let mut id_b = String::new();
    let (c, ()) = metered(cairn_cpu, async {
        id_b = launch(&ctl, &alice, "vol-b", &mut containers).await?;
        Ok(())
    })
    .await?;
    let ev = agent_event(&b, "volume restored", &id_b).await?;
    ensure!(ev.how == "fetched", "cold restore on B was {:?}", ev.how);
    let restored = dir.join("restore");
    std::fs::create_dir_all(&restored)?;
    let to = format!("{}/", restored.display());
    let (r, ()) = metered(rsync_cpu, rsync(&["-a", "--delete"], &url, &to)).await?;
    rows.push(Row {
        step: "cold restore",
        cairn: c,
        agent: ev,
        rsync: r,
        goal: None,
    });
    let (files, bytes, got) = digest(&copy_on(&b, &id_b))?;
    ensure!(got == want, "the copy restored on B differs from the home");
    ensure!(
        digest(&restored)?.2 == want,
        "rsync's restore differs from the home"
    );

    // 6. Warm restore on B.
    stop(&ctl, &alice, &id_b).await?;
    let no_change_b = agent_event(&b, "volume saved", &id_b).await?;
    eprintln!("6. warm restore");
    let (c, ()) = metered(cairn_cpu, async {
        id_b = launch(&ctl, &alice, "vol-b", &mut containers).await?;
        Ok(())
    })
    .await?;
    let ev = agent_event(&b, "volume restored", &id_b).await?;
    ensure!(ev.how == "kept", "warm restore on B was {:?}", ev.how);
    let (r, ()) = metered(rsync_cpu, rsync(&["-a", "--delete"], &url, &to)).await?;
    rows.push(Row {
        step: "warm restore",
        goal: Some(Goal {
            text: "< 1 s".into(),
            agent: ev.secs < 1.0,
            api: c.secs < 1.0,
        }),
        cairn: c,
        agent: ev,
        rsync: r,
    });
    ensure!(
        digest(&copy_on(&b, &id_b))?.2 == want,
        "the warm copy on B differs from the home"
    );
    stop(&ctl, &alice, &id_b).await?;
    drop(containers);
    drop(daemon);
    ctl.kill9();

    println!(
        "volumes: cairn (save: stop request → `stopped`, final save; restore: launch → `running`; \
         agent: its own timing) vs `rsync -a --delete` to/from an rsync daemon, loopback, one run"
    );
    println!(
        "| {:<28} | {:>11} | {:>13} | {:>7} | {:>9} | {:>11} | {:>9} | {:>9} | {:>11} | {:>11} | goal |",
        "step", "cairn API s", "cairn agent s", "rsync s", "ratio API", "ratio agent",
        "cairn MiB", "rsync MiB", "cairn CPU s", "rsync CPU s"
    );
    let mut rule = String::new();
    for w in [28, 11, 13, 7, 9, 11, 9, 9, 11, 11, 4] {
        let _ = write!(rule, "|{}", "-".repeat(w + 2));
    }
    println!("{rule}|");
    for r in &rows {
        println!("{}", r.markdown());
    }
    println!(
        "home: {} files, {:.1} MiB ({} text-sized, {} binaries, {} large of {:.0}–{:.0} MiB); \
         restored on B: {files} files, {:.1} MiB, byte for byte",
        home.files(),
        mib(home.total()),
        home.small.len(),
        home.bins.len(),
        home.large.len(),
        mib(home.large[0].1),
        mib(home.large[2].1),
        mib(bytes),
    );
    println!(
        "1% change: {:.2} MiB written ({:.2}% of the home): {} files rewritten, {} appended, \
         one 4 KiB insert, {} new, {} deleted",
        mib(changed.bytes),
        changed.bytes as f64 * 100.0 / home.total() as f64,
        changed.rewritten,
        changed.appended,
        changed.created,
        changed.deleted
    );
    println!(
        "chunk payload the agent sent: initial {:.1} MiB, no change {:.3} MiB, 1% {:.2} MiB, \
         4 KiB insert {:.3} MiB ({inserted} B changed); cold restore fetched {:.1} MiB",
        mib(rows[0].agent.bytes),
        mib(rows[2].agent.bytes),
        mib(rows[3].agent.bytes),
        mib(rows[4].agent.bytes),
        mib(rows[5].agent.bytes)
    );
    let warm_a_ms: Vec<f64> = warm_a.iter().map(|e| e.secs * 1000.0).collect();
    println!(
        "warm restores on A (agent, ms): {warm_a_ms:?}; no-change final save on B: {:.0} ms (agent)",
        no_change_b.secs * 1000.0
    );
    Ok(json!({
        "bench": "volumes", "scale": scale,
        "home": {"files": home.files(), "bytes": home.total()},
        "changed": {"bytes": changed.bytes, "rewritten": changed.rewritten, "appended": changed.appended,
                    "created": changed.created, "deleted": changed.deleted, "inserted": INSERT},
        "steps": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "warm_restores_on_a_ms": warm_a_ms,
        "no_change_save_on_b_ms": no_change_b.secs * 1000.0,
    }))
}
