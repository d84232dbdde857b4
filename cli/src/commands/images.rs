//! `images ls|push|rm`: image archives pushed to the controller (admins).
//!
//! `push` hashes the file (BLAKE3, streamed), asks the controller for an upload of
//! those bytes — a new one, or the unfinished one a killed `push` left, which then
//! resumes at its offset — and sends the rest in `PATCH` requests of [`CHUNK`] bytes
//! streamed from the file. A request that breaks off is retried from the offset the
//! controller reports. The controller then checks the hash and the `docker save`
//! layout before the image becomes usable in blueprints.

use std::io::Read;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, ReadBuf};

use super::Ctx;
use crate::client::{body, parse};
use crate::error::{ApiError, Error};
use crate::output::{self, Table};
use cairn_api::images::{CreateUpload, ImageRecord as Image, UploadAnswer as Upload};

/// Bytes per `PATCH` request: big enough that requests cost nothing, small enough that
/// a broken one loses little.
pub const CHUNK: u64 = 64 * 1024 * 1024;
/// Time limit of one `PATCH` (about 75 KiB/s for a whole [`CHUNK`]).
const PATCH_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Time limit of the commit: the controller hashes and reads the whole archive.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Failed requests in a row before `push` gives up (run it again to resume).
const MAX_RETRIES: u32 = 5;
/// Read size for hashing and for the request bodies.
const READ_SIZE: usize = 1024 * 1024;

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let v = ctx.client.get(&["images"]).await?;
    ctx.emit(&v, || {
        let images: Vec<Image> = parse(&v, "the image list")?;
        Ok(render_list(&images, output::now_ms()))
    })
}

/// `images rm ARCHIVE`: a full hash goes straight to the controller; a prefix or a
/// tag is looked up in the list first.
pub async fn remove(ctx: &Ctx, which: &str) -> Result<(), Error> {
    let archive = if is_hash(which) {
        which.to_string()
    } else {
        let v = ctx.client.get(&["images"]).await?;
        let images: Vec<Image> = parse(&v, "the image list")?;
        pick(&images, which)?.archive.clone()
    };
    let v = ctx.client.delete(&["images", &archive]).await?;
    ctx.emit(&v, || {
        let i: Image = parse(&v, "the removed image")?;
        Ok(format!(
            "removed image {} (archive {})\n",
            output::clean(&i.image_id),
            short(&i.archive)
        ))
    })
}

fn is_hash(s: &str) -> bool {
    cairn_shared::images::is_archive_hash(s)
}

/// The one image `which` names: by tag, or by a prefix of its archive hash or image
/// id (at least 4 hex digits, like Docker's short ids).
fn pick<'a>(images: &'a [Image], which: &str) -> Result<&'a Image, Error> {
    let by_tag: Vec<&Image> = images
        .iter()
        .filter(|i| i.tags.iter().any(|t| t == which))
        .collect();
    let found = if !by_tag.is_empty() {
        by_tag
    } else {
        let hex = which.strip_prefix("sha256:").unwrap_or(which);
        if hex.len() < 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            vec![]
        } else {
            let hex = hex.to_ascii_lowercase();
            images
                .iter()
                .filter(|i| {
                    i.archive.starts_with(&hex)
                        || i.image_id
                            .strip_prefix("sha256:")
                            .is_some_and(|h| h.starts_with(&hex))
                })
                .collect()
        }
    };
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::Api(ApiError {
            status: 404,
            code: "not_found".into(),
            message: format!(
                "no pushed image matches {:?} (see `cairn images ls`)",
                output::clean(which)
            ),
            fields: vec![],
        })),
        several => Err(Error::Input(format!(
            "{:?} matches {} images ({}); give more of the archive hash",
            output::clean(which),
            several.len(),
            several
                .iter()
                .map(|i| short(&i.archive))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `images push FILE`.
pub async fn push(ctx: &Ctx, file: &Path) -> Result<(), Error> {
    let size = check_archive_file(file)?;
    output::note(&format!(
        "hashing {} ({})",
        file.display(),
        output::bytes(size)
    ));
    let hash = hash_file(file).await?;
    let up = begin(ctx, &hash, size).await?;
    if up.done {
        output::note("the controller already has this archive");
        return finish_done(ctx, &up);
    }
    let id = up
        .id
        .clone()
        .ok_or_else(|| Error::Http("the controller's answer names no upload id".into()))?;
    if up.offset > 0 {
        output::note(&format!(
            "resuming at {} of {}",
            output::bytes(up.offset),
            output::bytes(size)
        ));
    }
    let mut progress = Progress::new(size);
    let mut offset = up.offset;
    let mut failures = 0;
    while offset < size {
        let n = CHUNK.min(size - offset);
        match send_chunk(ctx, &id, file, offset, n, &mut progress).await {
            Ok(next) => {
                offset = next;
                failures = 0;
            }
            Err(e) if retryable(&e) && failures < MAX_RETRIES => {
                failures += 1;
                let wait = backoff(failures);
                progress.end_line();
                output::note(&format!(
                    "sending broke off ({}); asking the controller where to continue in {}s (retry {failures} of {MAX_RETRIES})",
                    crate::error::one_line(&e.to_string()),
                    wait.as_secs()
                ));
                tokio::time::sleep(wait).await;
                // If this fails too, the next PATCH learns the offset from its 409.
                if let Ok(v) = ctx.client.get(&["images", "uploads", &id]).await {
                    let s: Upload = parse(&v, "the upload")?;
                    if s.offset != offset {
                        output::note(&format!("continuing at {}", output::bytes(s.offset)));
                    }
                    offset = s.offset;
                }
            }
            Err(e) => {
                progress.end_line();
                return Err(e);
            }
        }
    }
    progress.end_line();
    output::note("sent; the controller is checking the archive");
    commit(ctx, &id, &hash, size).await
}

/// `POST /images/uploads`: a new upload, the unfinished one of these bytes, or `done`.
async fn begin(ctx: &Ctx, hash: &str, size: u64) -> Result<Upload, Error> {
    let v = ctx
        .client
        .post(
            &["images", "uploads"],
            Some(&body(&CreateUpload {
                size_bytes: size,
                blake3: hash.to_string(),
            })?),
        )
        .await?;
    parse(&v, "the upload")
}

/// Commits, retrying a commit whose answer was lost: asking for the upload again
/// then says `done` if the controller did commit it.
async fn commit(ctx: &Ctx, id: &str, hash: &str, size: u64) -> Result<(), Error> {
    let mut failures = 0;
    loop {
        let res = ctx
            .client
            .send_long(
                Method::POST,
                &["images", "uploads", id, "commit"],
                &[],
                None,
                COMMIT_TIMEOUT,
            )
            .await;
        match res {
            Ok(v) => {
                let image: Image = parse(&v, "the pushed image")?;
                return ctx.emit(&v, || Ok(render_pushed(&image)));
            }
            // 5xx and transport errors only: a 409 here is not worth repeating.
            Err(e) if retryable(&e) && !is_conflict(&e) && failures < MAX_RETRIES => {
                failures += 1;
                let wait = backoff(failures);
                output::note(&format!(
                    "the commit's answer did not arrive ({}); asking again in {}s",
                    crate::error::one_line(&e.to_string()),
                    wait.as_secs()
                ));
                tokio::time::sleep(wait).await;
                if let Ok(up) = begin(ctx, hash, size).await {
                    if up.done {
                        return finish_done(ctx, &up);
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn finish_done(ctx: &Ctx, up: &Upload) -> Result<(), Error> {
    let image = up
        .image
        .clone()
        .ok_or_else(|| Error::Http("the controller's answer lacks the image".into()))?;
    let v = serde_json::to_value(&image).unwrap_or(Value::Null);
    ctx.emit(&v, || Ok(render_pushed(&image)))
}

/// Sends `n` bytes of `file` from `offset` in one `PATCH`; returns the new offset.
async fn send_chunk(
    ctx: &Ctx,
    id: &str,
    file: &Path,
    offset: u64,
    n: u64,
    progress: &mut Progress,
) -> Result<u64, Error> {
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(Error::io(format!("cannot open {}", file.display())))?;
    f.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(Error::io(format!("cannot read {}", file.display())))?;
    progress.at(offset);
    let reader = Counting {
        inner: f.take(n),
        progress: progress.clone(),
    };
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        reader, READ_SIZE,
    ));
    let v = ctx
        .client
        .send_long(
            Method::PATCH,
            &["images", "uploads", id],
            &[
                ("upload-offset", offset.to_string()),
                ("content-length", n.to_string()),
                ("content-type", "application/offset+octet-stream".into()),
            ],
            Some(body),
            PATCH_TIMEOUT,
        )
        .await?;
    let s: Upload = parse(&v, "the upload")?;
    progress.at(s.offset);
    Ok(s.offset)
}

/// Whether trying again may help: the controller unreachable or the connection
/// broken, a server error, or a conflict over the offset (asked for afresh).
fn retryable(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } | Error::Http(_) => true,
        Error::Api(a) => {
            (a.status >= 500 && a.code != "disk_full")
                || (a.status == 409 && matches!(a.code.as_str(), "offset_mismatch" | "busy"))
                || (a.status == 400 && a.code == "body_interrupted")
        }
        _ => false,
    }
}

fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Api(a) if a.status == 409)
}

/// 1, 2, 4, 8, then 15 seconds.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.saturating_sub(1).min(4)).min(15))
}

/// Checks that `file` can be an uncompressed `docker save` archive before hashing
/// and sending gigabytes: a regular file starting with a tar header. Returns its size.
fn check_archive_file(file: &Path) -> Result<u64, Error> {
    let shown = file.display();
    let meta =
        std::fs::metadata(file).map_err(|e| Error::Input(format!("cannot read {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(Error::Input(format!(
            "{shown} is not a file; give the archive from `docker save NAME:TAG -o FILE.tar`"
        )));
    }
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(file)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| Error::Input(format!("cannot read {shown}: {e}")))?;
    check_header(&head).map_err(|why| Error::Input(format!("{shown}: {why}")))?;
    Ok(meta.len())
}

/// Tells a tar from what people push by mistake, by its first 512 bytes.
fn check_header(head: &[u8]) -> Result<(), String> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Err("the archive is gzip-compressed; push the uncompressed `docker save` output (gunzip it first)".into());
    }
    if head.starts_with(b"(\xb5/\xfd") {
        return Err("the archive is zstd-compressed; push the uncompressed `docker save` output (unzstd it first)".into());
    }
    // Every tar flavour (ustar, pax, GNU) has this magic at offset 257.
    if head.len() < 512 || &head[257..262] != b"ustar" {
        return Err("not a tar archive; make one with `docker save NAME:TAG -o FILE.tar`".into());
    }
    Ok(())
}

/// BLAKE3 of a file, read in bounded chunks on the blocking pool.
async fn hash_file(file: &Path) -> Result<String, Error> {
    let path = file.to_path_buf();
    let shown = file.display().to_string();
    // The hash the controller checks and the agent verifies.
    tokio::task::spawn_blocking(move || cairn_shared::images::blake3_file(&path))
        .await
        .map_err(|e| Error::Http(format!("hashing {shown}: {e}")))?
        .map_err(Error::io(format!("cannot read {shown}")))
}

/// Upload progress on stderr, when stderr is a terminal: one line, redrawn at most
/// twice a second.
#[derive(Debug, Clone)]
struct Progress {
    shared: std::sync::Arc<std::sync::Mutex<ProgressState>>,
}

#[derive(Debug)]
struct ProgressState {
    done: u64,
    total: u64,
    shown: Option<Instant>,
    enabled: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        use std::io::IsTerminal;
        Progress {
            shared: std::sync::Arc::new(std::sync::Mutex::new(ProgressState {
                done: 0,
                total,
                shown: None,
                enabled: std::io::stderr().is_terminal(),
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ProgressState) -> T) -> T {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    fn at(&self, done: u64) {
        self.with(|s| s.done = done);
    }

    fn add(&self, n: u64) {
        self.with(|s| {
            s.done += n;
            if !s.enabled
                || s.shown
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
            {
                return;
            }
            s.shown = Some(Instant::now());
            let pct = s.done.min(s.total) * 100 / s.total.max(1);
            eprint!(
                "\r{} of {} ({pct}%)   ",
                output::bytes(s.done),
                output::bytes(s.total)
            );
        });
    }

    /// Ends the progress line, if one was drawn.
    fn end_line(&self) {
        self.with(|s| {
            if s.shown.take().is_some() {
                eprintln!();
            }
        });
    }
}

/// A reader that reports the bytes read through it to a [`Progress`].
struct Counting<R> {
    inner: R,
    progress: Progress,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            this.progress.add((buf.filled().len() - before) as u64);
        }
        r
    }
}

/// The first 12 digits of a hash, as Docker shows ids.
fn short(hash: &str) -> String {
    output::clean(hash).chars().take(12).collect()
}

/// What `push` prints: the image, its tags, and how a blueprint names it.
pub fn render_pushed(i: &Image) -> String {
    let id = i.image_id.strip_prefix("sha256:").unwrap_or(&i.image_id);
    let mut out = format!(
        "pushed image sha256:{} ({}), archive {}\n",
        short(id),
        output::bytes(i.size_bytes),
        short(&i.archive)
    );
    match i.tags.first() {
        None => out.push_str(
            "the image has no tag, and blueprints name images by tag: tag it and save it again \
             (docker tag IMAGE NAME:TAG; docker save NAME:TAG -o FILE.tar)\n",
        ),
        Some(first) => {
            let tags: Vec<String> = i.tags.iter().map(|t| output::clean(t)).collect();
            out.push_str(&format!("tags: {}\n", tags.join(", ")));
            out.push_str(&format!(
                "use it in a blueprint as image = \"{}\"\n",
                output::clean(first)
            ));
        }
    }
    out
}

/// The `images ls` table.
pub fn render_list(images: &[Image], now_ms: u64) -> String {
    if images.is_empty() {
        return "no images; push one with `cairn images push FILE.tar` (made with `docker save NAME:TAG -o FILE.tar`)\n".into();
    }
    let mut t = Table::new(&["ARCHIVE", "IMAGE ID", "TAGS", "SIZE", "PUSHED", "BY"]);
    for i in images {
        let id = i.image_id.strip_prefix("sha256:").unwrap_or(&i.image_id);
        t.row(vec![
            short(&i.archive),
            format!("sha256:{}", short(id)),
            if i.tags.is_empty() {
                "-".into()
            } else {
                i.tags.join(",")
            },
            output::bytes(i.size_bytes),
            output::ago(now_ms, i.uploaded_ms),
            i.uploaded_by.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(archive: &str, id: &str, tags: &[&str]) -> Image {
        Image {
            archive: archive.into(),
            size_bytes: 5 * 1024 * 1024,
            image_id: format!("sha256:{id}"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            uploaded_ms: 40_000,
            uploaded_by: "admin".into(),
        }
    }

    #[test]
    fn images_render_as_a_table_and_a_push_summary() {
        let a = "3f".repeat(32);
        let id = "ab".repeat(32);
        let list = vec![
            image(&a, &id, &["course/python:1", "course/python:latest"]),
            image(&"01".repeat(32), &"cd".repeat(32), &[]),
        ];
        assert_eq!(
            render_list(&list, 100_000),
            "ARCHIVE        IMAGE ID              TAGS                                   SIZE      PUSHED   BY\n\
             3f3f3f3f3f3f   sha256:abababababab   course/python:1,course/python:latest   5.0 MiB   1m ago   admin\n\
             010101010101   sha256:cdcdcdcdcdcd   -                                      5.0 MiB   1m ago   admin\n"
        );
        assert!(render_list(&[], 0).starts_with("no images;"));
        assert_eq!(
            render_pushed(&list[0]),
            "pushed image sha256:abababababab (5.0 MiB), archive 3f3f3f3f3f3f\n\
             tags: course/python:1, course/python:latest\n\
             use it in a blueprint as image = \"course/python:1\"\n"
        );
        assert!(render_pushed(&list[1]).contains("has no tag"));
    }

    #[test]
    fn rm_finds_images_by_tag_or_unique_prefix() {
        let list = vec![
            image(
                &format!("aaaa1{}", "0".repeat(59)),
                &"cd".repeat(32),
                &["x:1"],
            ),
            image(&format!("aaaa2{}", "0".repeat(59)), &"ef".repeat(32), &[]),
        ];
        assert_eq!(pick(&list, "x:1").unwrap().archive, list[0].archive);
        assert_eq!(pick(&list, "aaaa2").unwrap().archive, list[1].archive);
        assert_eq!(pick(&list, "sha256:efef").unwrap().archive, list[1].archive);
        let e = pick(&list, "aaaa").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::INVALID);
        assert!(e.to_string().contains("matches 2 images"), "{e}");
        let e = pick(&list, "y:2").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::NOT_FOUND);
        // Too short to be a prefix.
        assert_eq!(pick(&list, "aa").unwrap_err().exit_code(), 5);
        assert!(is_hash(&"0a".repeat(32)));
        assert!(!is_hash("aaaa"));
    }

    #[test]
    fn only_uncompressed_tars_are_pushed() {
        let mut tar = vec![0u8; 512];
        tar[257..263].copy_from_slice(b"ustar\0");
        assert!(check_header(&tar).is_ok());
        assert!(check_header(&[0x1f, 0x8b, 8, 0])
            .unwrap_err()
            .contains("gzip"));
        assert!(check_header(b"(\xb5/\xfd....")
            .unwrap_err()
            .contains("zstd"));
        assert!(check_header(b"hello").unwrap_err().contains("not a tar"));
        assert!(check_header(&[0u8; 512]).unwrap_err().contains("not a tar"));
    }

    #[test]
    fn broken_requests_are_retried_and_refusals_are_not() {
        let api = |status: u16, code: &str| {
            Error::Api(ApiError {
                status,
                code: code.into(),
                message: String::new(),
                fields: vec![],
            })
        };
        assert!(retryable(&Error::Http("connection reset".into())));
        assert!(retryable(&Error::Unreachable {
            url: "u".into(),
            detail: "d".into()
        }));
        assert!(retryable(&api(502, "http_502")));
        assert!(retryable(&api(409, "offset_mismatch")));
        assert!(retryable(&api(409, "busy")));
        assert!(!retryable(&api(409, "limit_reached")));
        assert!(!retryable(&api(422, "hash_mismatch")));
        assert!(!retryable(&api(507, "disk_full")));
        assert!(!retryable(&api(404, "not_found")));
        assert!(!retryable(&api(403, "forbidden")));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(9), Duration::from_secs(15));
    }
}
