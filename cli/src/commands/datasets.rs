//! `datasets ls|show|push|rm`: directories pushed to the controller as
//! content-defined chunks and a manifest.
//!
//! `push` scans the directory (files unchanged since the last push of the same
//! directory to the same controller are not read: their chunk lists come from the
//! scan cache under `$XDG_CACHE_HOME/cairn/scans/`), and stops there if the manifest
//! is the dataset's latest version's. Otherwise it hands the chunks to
//! [`crate::upload`], which asks which ones the controller lacks and sends those in
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

use cairn_api::datasets::{CommitAnswer, DatasetRecord};
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

    pb.finish_and_clear();
    let unique = scanned.manifest.unique_chunks();
    let source = Arc::new(upload::ScanChunks::new(root.clone(), scanned.locations));
    let sent = upload::send_missing(
        &ctx.client,
        &unique,
        source,
        "sending",
        upload::Limits {
            pack_bytes: PACK_TARGET,
            concurrency: CONCURRENCY,
            pack_timeout: PACK_TIMEOUT,
        },
    )
    .await?;

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
    // Pack bodies (chunks and their frame headers) and the manifest.
    let sent_all = sent.wire_bytes() + manifest.len() as u64;
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
