//! `images ls|push|rm`: image archives pushed to the controller (admins).
//!
//! `push` reads the file once, cutting it into content-defined chunks and hashing it
//! whole (BLAKE3, the name agents verify), sends only the chunks the controller
//! lacks ([`crate::upload`]) — the base layers another version of the image shares
//! are already there, and a killed `push` run again resends only what did not
//! arrive — then commits a one-file manifest of them. The controller reads the
//! archive back from its chunks, checks the hash and the `docker save` layout, and
//! only then is the image usable in blueprints.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_shared::chunks::{chunk_reader, ChunkRef, Entry, EntryKind, Manifest, DEFAULT_PARAMS};
use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use crate::client::parse;
use crate::error::{ApiError, Error};
use crate::output::{self, Table};
use crate::upload;
use cairn_api::images::ImageRecord as Image;

/// Time limit of the commit: the controller reads the whole archive back from its
/// chunks to check it.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

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
    let (hash, manifest, source) = read_archive(file, size).await?;
    // Already here: nothing to send (asked after reading, as the hash names it).
    match ctx.client.get(&["images", &hash]).await {
        Ok(v) => {
            output::note("the controller already has this archive");
            let image: Image = parse(&v, "the image")?;
            return ctx.emit(&v, || Ok(render_pushed(&image, Some((0, size)))));
        }
        Err(Error::Api(a)) if a.status == 404 => {}
        Err(e) => return Err(e),
    }
    let (chunks, _) = file_chunks(&manifest)?;
    let what = format!("sending {}", file.display());
    let mut sent = upload::send_missing(
        &ctx.client,
        chunks,
        source.clone(),
        &what,
        upload::Limits::default(),
    )
    .await?;
    output::note("sent; the controller is checking the archive");
    let encoded = bytes::Bytes::from(manifest.encode());
    let mut resent = false;
    loop {
        match commit(ctx, &hash, encoded.clone()).await {
            Ok(v) => {
                let image: Image = parse(&v, "the pushed image")?;
                return ctx.emit(&v, || Ok(render_pushed(&image, Some((sent.bytes, size)))));
            }
            // Chunks collected between the question and the commit (or lost): ask
            // again and send what is missing, once.
            Err(Error::Api(a)) if a.status == 409 && a.code == "chunks_missing" && !resent => {
                output::note(&format!("{}; sending them again", a.message));
                resent = true;
                let again = upload::send_missing(
                    &ctx.client,
                    chunks,
                    source.clone(),
                    &what,
                    upload::Limits::default(),
                )
                .await?;
                sent.bytes += again.bytes;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `POST /images?archive=HASH` with the manifest, retrying a commit whose answer was
/// lost: asking for the image then says whether the controller did commit it.
async fn commit(ctx: &Ctx, hash: &str, manifest: bytes::Bytes) -> Result<Value, Error> {
    let mut failures = 0;
    loop {
        let res = ctx
            .client
            .send_long_query(
                Method::POST,
                &["images"],
                &[("archive", hash.to_string())],
                &[("content-type", "application/octet-stream".into())],
                Some(reqwest::Body::from(manifest.clone())),
                COMMIT_TIMEOUT,
            )
            .await;
        match res {
            Ok(v) => return Ok(v),
            Err(e) if upload::retryable(&e) && failures < upload::MAX_RETRIES => {
                failures += 1;
                let wait = upload::backoff(failures);
                output::note(&format!(
                    "the commit's answer did not arrive ({}); asking again in {}s",
                    crate::error::one_line(&e.to_string()),
                    wait.as_secs()
                ));
                tokio::time::sleep(wait).await;
                if let Ok(v) = ctx.client.get(&["images", hash]).await {
                    return Ok(v);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The one file of an image manifest.
fn file_chunks(m: &Manifest) -> Result<(&[ChunkRef], u64), Error> {
    match m.entries.first().map(|e| (&e.kind, e.size)) {
        Some((EntryKind::File { chunks }, size)) => Ok((chunks, size)),
        _ => Err(Error::Http(
            "internal: an image manifest without its file".into(),
        )),
    }
}

/// Reads the archive once: its chunks (FastCDC, the default sizes) and, in the same
/// pass, its BLAKE3 (the name agents verify). Returns the hash, a one-file
/// manifest, and where each chunk is in the file.
async fn read_archive(
    file: &Path,
    size: u64,
) -> Result<(String, Manifest, Arc<dyn upload::ChunkSource>), Error> {
    let path = Arc::new(file.to_path_buf());
    let shown = file.display().to_string();
    let bar = upload::bytes_bar(size, &format!("reading {shown}"));
    let read = {
        let (path, bar) = (path.clone(), bar.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let f = std::fs::File::open(path.as_ref())?;
            let mut hashing = Hashing {
                inner: f,
                hasher: blake3::Hasher::new(),
            };
            let mut chunks = vec![];
            let mut source = upload::FileChunks::default();
            let mut offset = 0u64;
            chunk_reader(&mut hashing, DEFAULT_PARAMS, |c, _| {
                source.add(c.id, path.clone(), offset);
                offset += u64::from(c.len);
                bar.set_position(offset);
                chunks.push(c);
                Ok(())
            })?;
            Ok((
                hashing.hasher.finalize().to_hex().to_string(),
                chunks,
                source,
                offset,
            ))
        })
        .await
    };
    bar.finish_and_clear();
    let (hash, chunks, source, read) = read
        .map_err(|e| Error::Http(format!("reading {shown} stopped: {e}")))?
        .map_err(Error::io(format!("cannot read {shown}")))?;
    if read != size {
        return Err(Error::Input(format!(
            "{shown} changed while it was read ({size} bytes before, {read} now)"
        )));
    }
    let manifest = Manifest::new(
        DEFAULT_PARAMS,
        vec![Entry {
            path: "image.tar".into(),
            kind: EntryKind::File { chunks },
            mode: 0o644,
            size,
            // Not the file's: the same archive always makes the same manifest.
            mtime_ns: 0,
        }],
    );
    Ok((hash, manifest, Arc::new(source)))
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
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

/// The first 12 digits of a hash, as Docker shows ids.
fn short(hash: &str) -> String {
    output::clean(hash).chars().take(12).collect()
}

/// What `push` prints: the image, its tags, and how a blueprint names it.
/// `sent` is (bytes uploaded, archive bytes): what the chunk store spared.
pub fn render_pushed(i: &Image, sent: Option<(u64, u64)>) -> String {
    let id = i.image_id.strip_prefix("sha256:").unwrap_or(&i.image_id);
    let mut out = format!(
        "pushed image sha256:{} ({}), archive {}",
        short(id),
        output::bytes(i.size_bytes),
        short(&i.archive)
    );
    match sent {
        Some((s, t)) => out.push_str(&format!(", sent {s} bytes of {t}\n")),
        None => out.push('\n'),
    }
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
            manifest: "4e".repeat(32),
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
            render_pushed(&list[0], Some((1024, 5 * 1024 * 1024))),
            "pushed image sha256:abababababab (5.0 MiB), archive 3f3f3f3f3f3f, sent 1024 bytes of 5242880\n\
             tags: course/python:1, course/python:latest\n\
             use it in a blueprint as image = \"course/python:1\"\n"
        );
        assert!(render_pushed(&list[1], None).contains("has no tag"));
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
}
