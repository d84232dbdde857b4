//! `datasets ls|show|push|rm`: directories pushed to the controller as
//! content-defined chunks and a manifest.
//!
//! `push` scans the directory (files unchanged since the last push of the same
//! directory to the same controller are not read: their chunk lists come from the
//! scan cache under `$XDG_CACHE_HOME/cairn/scans/`), and stops there if the manifest
//! is the dataset's latest version's. Otherwise it asks which chunks the controller
//! lacks, sends those in packs of about [`PACK_TARGET`] bytes over [`CONCURRENCY`]
//! requests, each chunk read again from its file and checked against its id (a file
//! that changed since the scan stops the push), and commits the manifest. A pack
//! that fails is sent again a few times with growing pauses; nothing of a push is
//! lost by running it again, since chunks already sent are not sent twice.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::datasets::{
    CommitAnswer, DatasetRecord, MissingAnswer, MissingQuery, PackAnswer, MAX_MISSING_QUERY,
    MAX_PACK_BYTES, PACK_FRAME_HEADER,
};
use cairn_shared::chunks::scan::{self, ChunkLocation, ScanCache, ScanProgress};
use cairn_shared::chunks::{ChunkId, ChunkRef, DEFAULT_PARAMS};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;

use super::Ctx;
use crate::client::{body, parse};
use crate::error::{ApiError, Error};
use crate::output::{self, Table};

/// Bytes of chunk data per pack: big enough that requests cost little, small enough
/// that a failed one loses little (the controller takes up to 32 MiB).
pub const PACK_TARGET: usize = 8 * 1024 * 1024;
/// Packs in flight at once.
pub const CONCURRENCY: usize = 6;
/// Time limit of one pack (8 MiB at about 15 KiB/s).
const PACK_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Time limit of the commit (the controller checks every chunk is present).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Tries of one pack before the push gives up.
const ATTEMPTS: u32 = 4;

/// Whether `s` is a dataset name (the controller's rule, checked early to fail
/// before a long scan).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.ends_with('-')
}

fn check_name(name: &str) -> Result<(), Error> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "{:?} is not a dataset name: 1-63 characters of a-z, 0-9 and '-', starting with a letter, not ending with '-'",
            output::clean(name)
        )))
    }
}

/// `NAME`, `NAME@latest` (`None`) or `NAME@3`.
pub fn parse_ref(s: &str) -> Result<(&str, Option<u32>), Error> {
    let (name, version) = match s.split_once('@') {
        None | Some((_, "latest")) => (s.split('@').next().unwrap_or(s), None),
        Some((n, v)) => match v.parse::<u32>() {
            Ok(x) if x >= 1 && x.to_string() == v => (n, Some(x)),
            _ => {
                return Err(Error::Input(format!(
                    "{:?}: a version is a number from 1 or 'latest' (NAME@3)",
                    output::clean(s)
                )))
            }
        },
    };
    check_name(name)?;
    Ok((name, version))
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let v = ctx.client.get(&["datasets"]).await?;
    ctx.emit(&v, || {
        let all: Vec<DatasetRecord> = parse(&v, "the dataset list")?;
        if all.is_empty() {
            return Ok("no datasets yet; push one with `cairn datasets push NAME ./dir`\n".into());
        }
        let now = output::now_ms();
        let mut t = Table::new(&["NAME", "LATEST", "VERSIONS", "FILES", "SIZE", "PUSHED"]);
        for d in &all {
            let Some(l) = d.latest() else { continue };
            t.row(vec![
                output::clean(&d.name),
                format!("@{}", l.version),
                d.versions.len().to_string(),
                l.files.to_string(),
                output::bytes(l.bytes),
                format!(
                    "{} by {}",
                    output::ago(now, l.created_ms),
                    output::clean(&l.pushed_by)
                ),
            ]);
        }
        Ok(t.render())
    })
}

pub async fn show(ctx: &Ctx, name: &str) -> Result<(), Error> {
    check_name(name)?;
    let v = ctx.client.get(&["datasets", name]).await?;
    ctx.emit(&v, || {
        let d: DatasetRecord = parse(&v, "the dataset")?;
        let now = output::now_ms();
        let mut t = Table::new(&["VERSION", "FILES", "SIZE", "PUSHED", "BY", "MANIFEST"]);
        for x in d.versions.iter().rev() {
            t.row(vec![
                format!("{}@{}", output::clean(&d.name), x.version),
                x.files.to_string(),
                output::bytes(x.bytes),
                output::ago(now, x.created_ms),
                output::clean(&x.pushed_by),
                output::truncate(&output::clean(&x.manifest), 13),
            ]);
        }
        Ok(t.render())
    })
}

/// `datasets rm NAME` (every version) or `NAME@V` (one; `@latest` is looked up).
pub async fn remove(ctx: &Ctx, which: &str) -> Result<(), Error> {
    let (name, version) = parse_ref(which)?;
    let version = match (version, which.contains('@')) {
        (Some(v), _) => Some(v),
        (None, false) => None,
        (None, true) => {
            let d: DatasetRecord =
                parse(&ctx.client.get(&["datasets", name]).await?, "the dataset")?;
            Some(d.latest().map(|l| l.version).unwrap_or(0))
        }
    };
    let v = match version {
        None => ctx.client.delete(&["datasets", name]).await?,
        Some(n) => {
            ctx.client
                .delete(&["datasets", name, "versions", &n.to_string()])
                .await?
        }
    };
    ctx.emit(&v, || {
        Ok(match version {
            Some(n) => format!("removed {name}@{n}\n"),
            None => {
                let gone: Vec<serde_json::Value> = parse(&v, "the removed versions")?;
                format!(
                    "removed {name} ({} version{})\n",
                    gone.len(),
                    if gone.len() == 1 { "" } else { "s" }
                )
            }
        })
    })
}

/// Where the scan cache of `root` pushed to `url` lives: one file per directory and
/// controller, so pushing the same tree to two controllers does not thrash it.
fn cache_file(root: &Path, url: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".cache"))
        })?;
    let mut key = root.as_os_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(url.as_bytes());
    Some(
        base.join("cairn")
            .join("scans")
            .join(format!("{}.postcard", ChunkId::of(&key).to_hex())),
    )
}

/// A progress bar on stderr, or a hidden one when stderr is not a terminal.
fn bar() -> ProgressBar {
    if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The dataset's latest version's manifest id, if the dataset exists.
async fn latest(ctx: &Ctx, name: &str) -> Result<Option<(u32, String)>, Error> {
    match ctx.client.get(&["datasets", name]).await {
        Ok(v) => {
            let d: DatasetRecord = parse(&v, "the dataset")?;
            Ok(d.latest().map(|l| (l.version, l.manifest.clone())))
        }
        Err(Error::Api(ApiError { status: 404, .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Groups `chunks` into packs of about `target` bytes of chunk data (each below the
/// controller's limit, whatever the chunk sizes).
pub fn plan_packs(chunks: &[ChunkRef], target: usize) -> Vec<Vec<ChunkRef>> {
    let limit = MAX_PACK_BYTES;
    let mut packs = vec![];
    let mut cur: Vec<ChunkRef> = vec![];
    let mut size = 0usize;
    for c in chunks {
        let framed = PACK_FRAME_HEADER + c.len as usize;
        if !cur.is_empty() && (size + framed > target.min(limit)) {
            packs.push(std::mem::take(&mut cur));
            size = 0;
        }
        cur.push(*c);
        size += framed;
    }
    if !cur.is_empty() {
        packs.push(cur);
    }
    packs
}

/// Reads the chunks of one pack from their files and frames them, each checked
/// against its id.
fn read_pack(
    root: &Path,
    chunks: &[ChunkRef],
    locations: &HashMap<ChunkId, ChunkLocation>,
) -> Result<Vec<u8>, Error> {
    let size: usize = chunks
        .iter()
        .map(|c| PACK_FRAME_HEADER + c.len as usize)
        .sum();
    let mut pack = Vec::with_capacity(size);
    let mut open: Option<(PathBuf, std::fs::File)> = None;
    for c in chunks {
        let loc = locations.get(&c.id).ok_or_else(|| {
            Error::Input(format!(
                "internal: the scan gave no file for chunk {}",
                c.id.to_hex()
            ))
        })?;
        let path = root.join(&loc.path);
        let changed = || {
            Error::Input(format!(
                "{} changed while pushing; run again",
                path.display()
            ))
        };
        if open.as_ref().is_none_or(|(p, _)| *p != path) {
            let f = std::fs::File::open(&path).map_err(|_| changed())?;
            open = Some((path.clone(), f));
        }
        let Some((_, f)) = open.as_ref() else {
            return Err(changed());
        };
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset)
            .map_err(|_| changed())?;
        if !c.id.verifies(&buf) {
            return Err(changed());
        }
        pack.extend_from_slice(&c.id.0);
        pack.extend_from_slice(&loc.len.to_be_bytes());
        pack.extend_from_slice(&buf);
    }
    Ok(pack)
}

/// Whether another try of a failed request may succeed.
fn transient(e: &Error) -> bool {
    match e {
        Error::Http(_) | Error::Unreachable { .. } => true,
        Error::Api(a) => a.status >= 500 || a.status == 408 || a.status == 429,
        _ => false,
    }
}

/// Sends one pack, trying again after transient failures.
async fn send_pack(client: &crate::client::Client, pack: Vec<u8>) -> Result<PackAnswer, Error> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let r = client
            .send_long(
                Method::POST,
                &["chunks"],
                &[("content-type", "application/octet-stream".into())],
                Some(reqwest::Body::from(pack.clone())),
                PACK_TIMEOUT,
            )
            .await
            .and_then(|v| parse::<PackAnswer>(&v, "the pack answer"));
        match r {
            Ok(a) => return Ok(a),
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                output::note(&format!(
                    "sending chunks failed ({e}); trying again in {} ms",
                    delay.as_millis()
                ));
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `datasets push NAME DIR`.
pub async fn push(ctx: &Ctx, name: &str, dir: &Path) -> Result<(), Error> {
    check_name(name)?;
    let t0 = Instant::now();
    let root = std::fs::canonicalize(dir).map_err(Error::io(dir.display().to_string()))?;
    let cache_path = cache_file(&root, ctx.client.url());
    let previous = cache_path.as_deref().and_then(ScanCache::load);

    let pb = bar();
    pb.set_style(style(
        "scanning {wide_bar} {pos}/{len} files, {msg} ({per_sec}, {eta} left)",
    ));
    let scanned = {
        let (pb, root) = (pb.clone(), root.clone());
        tokio::task::spawn_blocking(move || {
            scan::scan(
                &root,
                DEFAULT_PARAMS,
                previous.as_ref(),
                &mut |p: ScanProgress| {
                    if let Some(t) = p.files_total {
                        pb.set_length(t);
                    }
                    pb.set_position(p.files_done);
                    pb.set_message(output::bytes(p.bytes_done));
                },
            )
        })
        .await
        .map_err(|e| Error::Http(format!("the scan stopped: {e}")))?
        .map_err(|e| Error::Input(format!("scanning {}: {e}", dir.display())))?
    };
    if let Some(p) = &cache_path {
        if scanned.files_read > 0 || !p.exists() {
            // Only saves work next time: a failure to save is worth a note, no more.
            let saved = p
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| scanned.cache.save(p));
            if let Err(e) = saved {
                output::note(&format!(
                    "could not save the scan cache {}: {e}",
                    p.display()
                ));
            }
        }
    }
    let manifest = scanned.manifest.encode();
    let id = ChunkId::of(&manifest).to_hex();
    if let Some((n, latest_id)) = latest(ctx, name).await? {
        if latest_id == id {
            pb.finish_and_clear();
            return output::print(&format!("unchanged: {name}@{n}\n"));
        }
    }

    let unique = scanned.manifest.unique_chunks();
    let mut missing: Vec<ChunkRef> = Vec::new();
    pb.set_style(style("checking {pos}/{len} chunks"));
    pb.set_length(unique.len() as u64);
    pb.set_position(0);
    for batch in unique.chunks(MAX_MISSING_QUERY) {
        let q = MissingQuery {
            ids: batch.iter().map(|c| c.id.to_hex()).collect(),
        };
        let a: MissingAnswer = parse(
            &ctx.client
                .post(&["chunks", "missing"], Some(&body(&q)?))
                .await?,
            "the missing chunks",
        )?;
        let lens: HashMap<&str, ChunkRef> = q
            .ids
            .iter()
            .map(String::as_str)
            .zip(batch.iter().copied())
            .collect();
        for m in &a.missing {
            let c = lens.get(m.as_str()).ok_or_else(|| {
                Error::Http(format!("the controller named a chunk not asked about: {m}"))
            })?;
            missing.push(*c);
        }
        pb.inc(batch.len() as u64);
    }

    let to_send: u64 = missing.iter().map(|c| u64::from(c.len)).sum();
    pb.set_style(style(
        "sending {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta} left)",
    ));
    pb.set_length(to_send);
    pb.set_position(0);
    pb.reset_eta();
    let locations = Arc::new(scanned.locations);
    let mut packs = plan_packs(&missing, PACK_TARGET).into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    loop {
        while running.len() < CONCURRENCY {
            let Some(pack) = packs.next() else { break };
            let (client, root, locations, pb) = (
                ctx.client.clone(),
                root.clone(),
                locations.clone(),
                pb.clone(),
            );
            running.spawn(async move {
                let data_len: u64 = pack.iter().map(|c| u64::from(c.len)).sum();
                let bytes =
                    tokio::task::spawn_blocking(move || read_pack(&root, &pack, &locations))
                        .await
                        .map_err(|e| Error::Http(format!("reading chunks stopped: {e}")))??;
                let wire = bytes.len() as u64;
                send_pack(&client, bytes).await?;
                pb.inc(data_len);
                Ok::<u64, Error>(wire)
            });
        }
        match running.join_next().await {
            None => break,
            Some(Ok(Ok(wire))) => sent += wire,
            Some(Ok(Err(e))) => {
                pb.abandon();
                return Err(e);
            }
            Some(Err(e)) => {
                pb.abandon();
                return Err(Error::Http(format!("a pack upload stopped: {e}")));
            }
        }
    }
    pb.finish_and_clear();

    let v = ctx
        .client
        .send_long(
            Method::POST,
            &["datasets", name, "versions"],
            &[("content-type", "application/octet-stream".into())],
            Some(reqwest::Body::from(manifest.clone())),
            COMMIT_TIMEOUT,
        )
        .await?;
    let sent_all = sent + manifest.len() as u64;
    ctx.emit(&v, || {
        let a: CommitAnswer = parse(&v, "the commit answer")?;
        if a.unchanged {
            return Ok(format!("unchanged: {name}@{}\n", a.version.version));
        }
        Ok(format!(
            "pushed {name}@{}: {} files, {}, sent {} in {:.1} s\n",
            a.version.version,
            a.version.files,
            output::bytes(a.version.bytes),
            output::bytes(sent_all),
            t0.elapsed().as_secs_f64()
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn c(n: u8, len: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&[n]),
            len,
        }
    }

    #[test]
    fn packs_stay_near_the_target_and_under_the_limit() {
        let chunks: Vec<ChunkRef> = (0..10).map(|n| c(n, 3 << 20)).collect();
        let packs = plan_packs(&chunks, PACK_TARGET);
        assert!(
            packs.iter().all(|p| p.len() == 2),
            "{:?}",
            packs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(packs.iter().map(Vec::len).sum::<usize>(), 10);
        // A chunk bigger than the target goes alone.
        let big = plan_packs(&[c(1, 100), c(2, 9 << 20), c(3, 100)], PACK_TARGET);
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
        assert!(plan_packs(&[], PACK_TARGET).is_empty());
    }

    #[test]
    fn refs() {
        assert_eq!(parse_ref("ds").unwrap(), ("ds", None));
        assert_eq!(parse_ref("ds@latest").unwrap(), ("ds", None));
        assert_eq!(parse_ref("ds@12").unwrap(), ("ds", Some(12)));
        assert!(parse_ref("ds@0").is_err());
        assert!(parse_ref("ds@x").is_err());
        assert!(parse_ref("DS").is_err());
    }

    #[test]
    fn a_file_changed_since_the_scan_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"hello").unwrap();
        let chunk = ChunkRef {
            id: ChunkId::of(b"hello"),
            len: 5,
        };
        let loc: HashMap<ChunkId, ChunkLocation> = [(
            chunk.id,
            ChunkLocation {
                path: "f".into(),
                offset: 0,
                len: 5,
            },
        )]
        .into();
        let pack = read_pack(dir.path(), &[chunk], &loc).unwrap();
        assert_eq!(pack.len(), PACK_FRAME_HEADER + 5);
        std::fs::write(dir.path().join("f"), b"HELLO").unwrap();
        let e = read_pack(dir.path(), &[chunk], &loc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed while pushing; run again"), "{e}");
    }
}
