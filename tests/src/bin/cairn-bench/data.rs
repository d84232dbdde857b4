//! `cairn-bench datasets` and `cairn-bench chunk-sizes`: Cairn's bytes mechanism
//! beside `rsync -a` to an rsync daemon (Debian's `rsync`), on the same trees, in one
//! run, on loopback.
//!
//! Trees (deterministic pseudo-random, incompressible bytes):
//! * **small** — about 1 GiB: 10,000 files of 512 B–256 KiB in 100 directories, plus
//!   four large files.
//! * **large** — a few multi-GiB files.
//!
//! For each tree: the first push, the same push again (nothing changed), a fetch into
//! an empty place, then about 1% of the bytes changed (whole small files rewritten and
//! contiguous regions of the large ones overwritten), pushed and fetched again. Bytes
//! on the wire are counted on the loopback interface (`/proc/net/dev`, `lo` transmit
//! bytes), the same way for both tools, so they include each protocol's own overhead
//! (rsync's block checksums, QUIC and TLS framing, HTTP).
//!
//! Every measured step starts after a `sync`, so no tool pays for writing back
//! another's dirty pages.
//!
//! Cairn's push is durable when acknowledged (its chunks are flushed to disk), rsync's
//! is not, so the first push is also shown beside `rsync -a --fsync`.
//!
//! Cairn's push is the real `cairn datasets push`; its fetch is the real agent
//! fetching a version ahead of launches (a blueprint with `prepull = "all"` mounting
//! it), timed until the host reports the version materialised. rsync's fetch copies
//! the daemon's module into an empty directory (first fetch) or over the previous
//! copy (after the change).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_shared::chunks::{scan, Params};
use cairn_tests::cluster::{bin, controller_with_agent_using, Controller, ControllerOptions};
use serde_json::{json, Value};

use super::common::{
    measure, measure_async, mib, noise, rsync, rsync_with, write_file, RsyncDaemon, Step,
};

/// A tree of the benchmark, and how to change 1% of it.
#[derive(Debug, Clone)]
struct Tree {
    name: &'static str,
    /// Small files: (relative path, size).
    small: Vec<(String, u64)>,
    /// Large files: (relative path, size).
    large: Vec<(String, u64)>,
}

impl Tree {
    fn small_tree() -> Self {
        // Sizes log-uniform over 512 B – 256 KiB from a fixed sequence.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut small = vec![];
        for i in 0..10_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let exp = 9.0 + (x % 10_000) as f64 / 10_000.0 * 9.0; // 2^9 .. 2^18
            let size = 2f64.powf(exp) as u64;
            small.push((format!("d{:02}/f{:05}.dat", i % 100, i), size));
        }
        let small_total: u64 = small.iter().map(|(_, s)| s).sum();
        // Top up to about 1 GiB with four large files.
        let each = ((1u64 << 30).saturating_sub(small_total) / 4).max(1 << 20);
        let large = (0..4)
            .map(|i| (format!("large/part{i}.bin"), each))
            .collect();
        Tree {
            name: "small",
            small,
            large,
        }
    }

    fn large_tree(files: usize, gib: f64) -> Self {
        let each = (gib * (1u64 << 30) as f64) as u64 / files as u64;
        Tree {
            name: "large",
            small: vec![],
            large: (0..files).map(|i| (format!("big{i}.bin"), each)).collect(),
        }
    }

    fn total(&self) -> u64 {
        self.small.iter().chain(&self.large).map(|(_, s)| s).sum()
    }

    fn files(&self) -> usize {
        self.small.len() + self.large.len()
    }

    fn write(&self, root: &Path) -> Result<()> {
        if root.exists() {
            std::fs::remove_dir_all(root)?;
        }
        for (path, size) in self.small.iter().chain(&self.large) {
            let p = root.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            write_file(&p, &format!("{}/{path}", self.name), *size)?;
        }
        Ok(())
    }

    /// Changes about 1% of the bytes: half as whole small files rewritten (same
    /// size, new bytes), half as one contiguous region in the middle of each large
    /// file. Returns the bytes changed.
    fn change_one_percent(&self, root: &Path, round: u32) -> Result<u64> {
        let target = self.total() / 100;
        let mut changed = 0u64;
        let small_budget = if self.small.is_empty() { 0 } else { target / 2 };
        for (path, size) in self.small.iter().step_by(7) {
            if changed + size > small_budget {
                break;
            }
            write_file(&root.join(path), &format!("changed{round}/{path}"), *size)?;
            changed += size;
        }
        let per_large = (target - changed) / self.large.len().max(1) as u64;
        for (path, size) in &self.large {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(root.join(path))?;
            let at = size / 2;
            let n = per_large.min(size - at);
            f.seek(SeekFrom::Start(at))?;
            f.write_all(&noise(&format!("changed{round}/{path}"), n as usize))?;
            changed += n;
        }
        Ok(changed)
    }
}

/// `cairn datasets push NAME DIR` as the admin; returns its stdout.
fn cairn_push(ctl: &Controller, home: &Path, name: &str, dir: &Path) -> Result<String> {
    let out = Command::new(bin("cairn"))
        .args(["datasets", "push", name])
        .arg(dir)
        .env("CAIRN_URL", &ctl.api)
        .env("CAIRN_TOKEN", &ctl.admin_token)
        .env("CAIRN_CONFIG", home.join("cairn.toml"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .stdin(Stdio::null())
        .output()
        .context("running cairn")?;
    if !out.status.success() {
        bail!(
            "cairn datasets push {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The manifest id of a dataset's latest version, from the API.
async fn latest_manifest(ctl: &Controller, name: &str) -> Result<String> {
    let (s, d) = ctl.get(&format!("/api/v1/datasets/{name}")).await;
    if s != 200 {
        bail!("GET dataset {name}: {s} {d}");
    }
    d["versions"]
        .as_array()
        .and_then(|v| v.last())
        .and_then(|v| v["manifest"].as_str())
        .map(str::to_string)
        .with_context(|| format!("no versions in {d}"))
}

/// Waits until `host` reports `manifest` materialised.
async fn wait_cached(ctl: &Controller, host: &str, manifest: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let (_, h) = ctl.get(&format!("/api/v1/hosts/{host}")).await;
        let has = h["datasets"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m.as_str() == Some(manifest)));
        if has {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("host {host} never reported dataset {manifest}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Saves a blueprint mounting `dataset` (latest) with the given pre-pull policy.
async fn dataset_blueprint(
    ctl: &Controller,
    name: &str,
    dataset: &str,
    prepull: &str,
) -> Result<()> {
    let image = cairn_tests::images::busybox_image();
    let spec = json!({
        "name": name, "image": image, "pull": "never", "app": "http",
        "command": ["httpd", "-f", "-p", "8080"], "app_port": 8080,
        "memory_mib": 64, "cpus": 0.5, "prepull": prepull,
        "datasets": [{"name": dataset, "path": "/data"}],
    });
    let (s, b) = ctl
        .request(
            Some(&ctl.admin_token),
            reqwest::Method::POST,
            "/api/v1/blueprints",
            Some(spec.clone()),
        )
        .await;
    if s == 409 {
        let (s2, b2) = ctl
            .request(
                Some(&ctl.admin_token),
                reqwest::Method::PUT,
                &format!("/api/v1/blueprints/{name}"),
                Some(spec),
            )
            .await;
        if s2 != 200 {
            bail!("updating blueprint {name}: {s2} {b2}");
        }
    } else if s != 201 {
        bail!("creating blueprint {name}: {s} {b}");
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
struct Row {
    cairn: Step,
    rsync: Step,
}

fn table_row(out: &mut String, what: &str, r: Row) {
    let ratio = if r.rsync.secs > 0.0 {
        r.cairn.secs / r.rsync.secs
    } else {
        f64::NAN
    };
    let _ = writeln!(
        out,
        "| {what:<34} | {:>9.2} | {:>9.2} | {:>6.2} | {:>11.1} | {:>11.1} |",
        r.cairn.secs,
        r.rsync.secs,
        ratio,
        mib(r.cairn.wire),
        mib(r.rsync.wire)
    );
}

/// The whole comparison.
pub async fn datasets(dir: PathBuf, large_files: usize, large_gib: f64) -> Result<Value> {
    let _ = std::fs::create_dir_all(&dir);
    // Shared with the harness: controller and agent live under `dir` too, so all
    // copies are on the same disk.
    let (ctl, mut agent, host) =
        controller_with_agent_using(&dir, &ControllerOptions::default(), "bench").await;
    let daemon = RsyncDaemon::start(&dir.join("rsyncd"))?;
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    let mut table = String::new();
    let mut results = vec![];
    let _ = writeln!(
        table,
        "| {:<34} | {:>9} | {:>9} | {:>6} | {:>11} | {:>11} |",
        "step", "cairn (s)", "rsync (s)", "ratio", "cairn MiB", "rsync MiB"
    );
    let _ = writeln!(
        table,
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(36),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(8),
        "-".repeat(13),
        "-".repeat(13)
    );
    for tree in [Tree::small_tree(), Tree::large_tree(large_files, large_gib)] {
        let src = dir.join("src").join(tree.name);
        eprintln!(
            "writing the {} tree: {} files, {:.0} MiB",
            tree.name,
            tree.files(),
            mib(tree.total())
        );
        tree.write(&src)?;
        let name = format!("bench-{}", tree.name);
        let fetched = dir.join("fetched").join(tree.name);
        let _ = std::fs::remove_dir_all(&fetched);
        std::fs::create_dir_all(&fetched)?;
        let from = format!("{}/", src.display());
        let mut row = |what: String, r: Row| {
            table_row(&mut table, &what, r);
            results.push(
                json!({"step": what, "cairn_s": r.cairn.secs, "rsync_s": r.rsync.secs,
                                "cairn_wire": r.cairn.wire, "rsync_wire": r.rsync.wire}),
            );
        };

        // First push.
        let (c, _) = measure(|| cairn_push(&ctl, &home, &name, &src))?;
        let (r, _) = measure(|| rsync(&from, &daemon.url(tree.name)))?;
        row(
            format!("{}: first push", tree.name),
            Row { cairn: c, rsync: r },
        );
        // Cairn acknowledges a push only once its chunks are on disk; rsync -a
        // leaves them in the page cache. The same copy with rsync --fsync is the
        // like-for-like peer of a durable push.
        let durable_url = daemon.url(&format!("{}-fsync", tree.name));
        let (r, _) = measure(|| rsync_with(&["-a", "--fsync"], &from, &durable_url))?;
        row(
            format!("{}: first push (rsync --fsync)", tree.name),
            Row { cairn: c, rsync: r },
        );
        // The same push again.
        let (c, out) = measure(|| cairn_push(&ctl, &home, &name, &src))?;
        if !out.contains("unchanged") {
            bail!("a repeated push of unchanged data made a new version: {out}");
        }
        let (r, _) = measure(|| rsync(&from, &daemon.url(tree.name)))?;
        row(
            format!("{}: push again, unchanged", tree.name),
            Row { cairn: c, rsync: r },
        );
        // First fetch: the agent pre-fetches the version for a blueprint.
        let manifest = latest_manifest(&ctl, &name).await?;
        let (c, _) = measure_async(async {
            dataset_blueprint(&ctl, &name, &name, "all").await?;
            wait_cached(&ctl, &host, &manifest).await
        })
        .await?;
        let (r, _) = measure(|| rsync(&daemon.url(tree.name), &format!("{}/", fetched.display())))?;
        row(
            format!("{}: first fetch", tree.name),
            Row { cairn: c, rsync: r },
        );
        // About 1% changed. The blueprint stops asking for pre-fetch first, so the
        // agent does not fetch the new version while the push is being measured.
        dataset_blueprint(&ctl, &name, &name, "none").await?;
        let changed = tree.change_one_percent(&src, 1)?;
        let (c, _) = measure(|| cairn_push(&ctl, &home, &name, &src))?;
        let (r, _) = measure(|| rsync(&from, &daemon.url(tree.name)))?;
        row(
            format!("{}: push after 1% change", tree.name),
            Row { cairn: c, rsync: r },
        );
        let manifest2 = latest_manifest(&ctl, &name).await?;
        let (c, _) = measure_async(async {
            dataset_blueprint(&ctl, &name, &name, "all").await?;
            wait_cached(&ctl, &host, &manifest2).await
        })
        .await?;
        let (r, _) = measure(|| rsync(&daemon.url(tree.name), &format!("{}/", fetched.display())))?;
        row(
            format!("{}: fetch after 1% change", tree.name),
            Row { cairn: c, rsync: r },
        );
        let _ = writeln!(
            table,
            "| {:<34} | changed {:.1} MiB ({:.2}% of {:.0} MiB) |",
            format!("{}: bytes changed", tree.name),
            mib(changed),
            changed as f64 * 100.0 / tree.total() as f64,
            mib(tree.total())
        );
        results.push(
            json!({"tree": tree.name, "changed_bytes": changed, "total_bytes": tree.total()}),
        );
        std::fs::remove_dir_all(&fetched)?;
    }

    // Launch to running with a 1 GiB dataset, cold and warm cache.
    let cold = Tree {
        name: "launch",
        small: vec![],
        large: (0..16)
            .map(|i| (format!("part{i:02}.bin"), 64u64 << 20))
            .collect(),
    };
    let src = dir.join("src").join("launch");
    cold.write(&src)?;
    cairn_push(&ctl, &home, "bench-launch", &src)?;
    dataset_blueprint(&ctl, "bench-launch", "bench-launch", "none").await?;
    let cold_ms = super::timed_launch(&ctl, &ctl.admin_token, "bench-launch").await?;
    let warm_ms = super::timed_launch(&ctl, &ctl.admin_token, "bench-launch").await?;
    agent.kill9();

    println!("datasets: cairn (push: `cairn datasets push`; fetch: agent pre-fetch until the host reports it) vs `rsync -a` to/from an rsync daemon, loopback, one run");
    print!("{table}");
    println!(
        "launch to running, blueprint with a 1 GiB dataset (16 × 64 MiB): cold cache {cold_ms:.0} ms, warm cache {warm_ms:.0} ms"
    );
    Ok(json!({"steps": results, "launch_cold_ms": cold_ms, "launch_warm_ms": warm_ms}))
}

/// Chunk sizes: dedup between a tree and its 1%-changed copy, manifest size and
/// scan throughput, for average chunk sizes of 16, 64 and 256 KiB.
pub fn chunk_sizes(dir: PathBuf, large_files: usize, large_gib: f64) -> Result<Value> {
    let mut rows = vec![];
    println!("| tree  | avg KiB | chunks  | manifest KiB | scan MiB/s | new chunk bytes after 1% change / changed bytes |");
    println!("|-------|--------:|--------:|-------------:|-----------:|-----------------------------------------------:|");
    for tree in [Tree::small_tree(), Tree::large_tree(large_files, large_gib)] {
        let src = dir.join("chunk-sizes").join(tree.name);
        tree.write(&src)?;
        let mut before = vec![];
        for avg in [16u32, 64, 256] {
            let params = Params::with_avg(avg * 1024);
            let t0 = Instant::now();
            let s = scan::scan(&src, params, None, &mut |_| {})?;
            let secs = t0.elapsed().as_secs_f64();
            before.push((avg, params, s.manifest));
            let _ = secs;
            rows.push(json!({"tree": tree.name, "avg_kib": avg, "scan_s": secs}));
        }
        let changed = tree.change_one_percent(&src, 1)?;
        for (i, (avg, params, m1)) in before.into_iter().enumerate() {
            let had: HashSet<_> = m1.unique_chunks().into_iter().map(|c| c.id).collect();
            let s2 = scan::scan(&src, params, None, &mut |_| {})?;
            let new_bytes: u64 = s2
                .manifest
                .unique_chunks()
                .into_iter()
                .filter(|c| !had.contains(&c.id))
                .map(|c| u64::from(c.len))
                .sum();
            let chunks = m1.unique_chunks().len();
            let manifest_kib = m1.encode().len() as f64 / 1024.0;
            let scan_s = rows[rows.len() - 3 + i]["scan_s"]
                .as_f64()
                .unwrap_or(f64::NAN);
            let mibps = mib(tree.total()) / scan_s;
            let amp = new_bytes as f64 / changed as f64;
            println!(
                "| {:<5} | {avg:>7} | {chunks:>7} | {manifest_kib:>12.0} | {mibps:>10.0} | {amp:>46.2} |",
                tree.name
            );
            let idx = rows.len() - 3 + i;
            rows[idx]["chunks"] = json!(chunks);
            rows[idx]["manifest_bytes"] = json!(m1.encode().len());
            rows[idx]["amplification"] = json!(amp);
        }
        std::fs::remove_dir_all(&src)?;
    }
    Ok(json!({ "rows": rows }))
}
