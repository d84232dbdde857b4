//! `datasets ls|show|push|rm`: directories pushed to the controller as
//! content-defined chunks and a manifest.
//!
//! `push` scans the directory (files unchanged since the last push of the same
//! directory to the same controller are not read: their chunk lists come from the
//! scan cache under `$XDG_CACHE_HOME/cairn/scans/`), and stops there if the manifest
//! is the dataset's latest version's. Otherwise it hands the chunks to
//! [`crate::upload`] (only those of files read this time when a scan cache vouches
//! for the rest: the cache is saved only after a commit, so what it lists is on the
//! controller; should the commit still find chunks missing, all are checked and the
//! commit tried again), which asks which ones the controller lacks and sends those in
//! packs of at most [`PACK_TARGET`] bytes over [`CONCURRENCY`] requests, each chunk
//! read again from its file and checked against its id (a file that changed since
//! the scan stops the push, named), retrying packs that fail; then it commits the
//! manifest. Nothing of a push is lost by running it again, since chunks already
//! sent are not sent twice.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::datasets::{CommitAnswer, DatasetRecord, MANIFEST_DELTA};
use cairn_shared::chunks::delta;
use cairn_shared::chunks::scan::{self, ScanCache, ScanProgress};
use cairn_shared::chunks::{ChunkId, DEFAULT_PARAMS};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;

use super::Ctx;
use crate::client::parse;
use crate::error::{ApiError, Error};
use crate::output::{self, Table};
use crate::upload;

/// Bytes of a pack body at most: big enough that requests cost little, small enough
/// that a failed one loses little (the controller takes up to 32 MiB).
pub const PACK_TARGET: usize = 8 * 1024 * 1024;
/// Packs in flight at once.
pub const CONCURRENCY: usize = 6;
/// Time limit of one pack (8 MiB at about 15 KiB/s).
const PACK_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Time limit of the commit (the controller checks every chunk is present).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

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

/// Where the manifest last pushed from a directory is kept, beside its scan cache.
fn manifest_file(cache: &Path) -> PathBuf {
    cache.with_extension("manifest")
}

/// Keeps `manifest` as the base of the next push's delta (best effort: without it
/// the next push sends the whole manifest).
fn save_manifest(cache: Option<&Path>, manifest: &[u8]) {
    let Some(cache) = cache else { return };
    let path = manifest_file(cache);
    let tmp = path.with_extension("manifest.tmp");
    let saved = std::fs::write(&tmp, manifest).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = saved {
        let _ = std::fs::remove_file(&tmp);
        output::note(&format!("could not save {}: {e}", path.display()));
    }
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

/// `datasets push NAME DIR`.
pub async fn push(ctx: &Ctx, name: &str, dir: &Path) -> Result<(), Error> {
    check_name(name)?;
    let t0 = Instant::now();
    let root = std::fs::canonicalize(dir).map_err(Error::io(dir.display().to_string()))?;
    let cache_path = cache_file(&root, ctx.client.url());
    let previous = cache_path.as_deref().and_then(ScanCache::load);
    let trusted_cache = previous.is_some();

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
    // Saved only once the controller holds what it describes (below), so a cached
    // file's chunks can be taken to be there.
    let save_cache = |scanned: &scan::Scan| {
        let Some(p) = &cache_path else { return };
        if scanned.files_read == 0 && p.exists() {
            return;
        }
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
    };
    let manifest = scanned.manifest.encode();
    let id = ChunkId::of(&manifest).to_hex();
    let latest = latest(ctx, name).await?;
    if let Some((n, latest_id)) = &latest {
        if *latest_id == id {
            pb.finish_and_clear();
            save_cache(&scanned);
            save_manifest(cache_path.as_deref(), &manifest);
            return output::print(&format!("unchanged: {name}@{n}\n"));
        }
    }
    // The manifest goes as a delta from the latest version's when this machine
    // pushed that one (a 10,000-file tree's megabyte becomes a few kilobytes).
    let delta: Option<Vec<u8>> = cache_path
        .as_deref()
        .and_then(|p| std::fs::read(manifest_file(p)).ok())
        .filter(|base| {
            latest
                .as_ref()
                .is_some_and(|(_, l)| *l == ChunkId::of(base).to_hex())
        })
        .map(|base| delta::diff(ChunkId::of(&base), &base, &manifest).encode())
        .filter(|d| d.len() < manifest.len());

    pb.finish_and_clear();
    // With a scan cache from the last push, only the files read this time can hold
    // chunks the controller lacks: ask about those alone (on a 10,000-file tree
    // that is a few ids instead of 20,000). If the controller was cleaned since,
    // the commit names what it misses and everything is asked about.
    let unique = scanned.manifest.unique_chunks();
    let asked = if trusted_cache {
        scanned.fresh.clone()
    } else {
        unique.clone()
    };
    let source: Arc<dyn upload::ChunkSource> = Arc::new(upload::ScanChunks::new(
        root.clone(),
        scanned.locations.clone(),
    ));
    let limits = upload::Limits {
        pack_bytes: PACK_TARGET,
        concurrency: CONCURRENCY,
        pack_timeout: PACK_TIMEOUT,
    };
    let mut sent =
        upload::send_missing(&ctx.client, &asked, source.clone(), "sending", limits).await?;
    let send = |body: Vec<u8>, content_type: &'static str| async move {
        ctx.client
            .send_long(
                Method::POST,
                &["datasets", name, "versions"],
                &[("content-type", content_type.into())],
                Some(reqwest::Body::from(body)),
                COMMIT_TIMEOUT,
            )
            .await
    };
    let commit = || async {
        if let Some(d) = &delta {
            match send(d.clone(), MANIFEST_DELTA).await {
                // The base went (removed since): the whole manifest, then.
                Err(Error::Api(ApiError { code, .. })) if code == "base_unknown" => {}
                r => return r,
            }
        }
        send(manifest.clone(), "application/octet-stream").await
    };
    let v = match commit().await {
        Err(Error::Api(ApiError { code, .. }))
            if code == "chunks_missing" && asked.len() < unique.len() =>
        {
            output::note("the controller lacks chunks of unchanged files; checking them all");
            let more =
                upload::send_missing(&ctx.client, &unique, source, "sending", limits).await?;
            sent.chunks += more.chunks;
            sent.bytes += more.bytes;
            commit().await?
        }
        r => r?,
    };
    save_cache(&scanned);
    save_manifest(cache_path.as_deref(), &manifest);
    // Pack bodies (chunks and their frame headers) and the manifest or its delta.
    let sent_all = sent.wire_bytes() + delta.as_ref().unwrap_or(&manifest).len() as u64;
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

    #[test]
    fn refs() {
        assert_eq!(parse_ref("ds").unwrap(), ("ds", None));
        assert_eq!(parse_ref("ds@latest").unwrap(), ("ds", None));
        assert_eq!(parse_ref("ds@12").unwrap(), ("ds", Some(12)));
        assert!(parse_ref("ds@0").is_err());
        assert!(parse_ref("ds@x").is_err());
        assert!(parse_ref("DS").is_err());
    }
}
