//! The `docker save` archive inspector: reads an archive (classic or OCI layout)
//! and says which image it holds, or exactly why Docker could not load it. Pure: a
//! reader in, facts or a reason out; the upload store
//! ([`super::archives`]) calls it on every commit.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use serde::Deserialize;
use sha2::Digest;

/// Largest `manifest.json` read into memory.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest image config read into memory (they are a few KiB).
const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Most members of an archive indexed while inspecting it (a `docker save` archive
/// has a handful per layer).
const MAX_MEMBERS: usize = 100_000;
/// Most tags one archive may carry, and the longest tag.
const MAX_TAGS: usize = 100;
const MAX_TAG_LEN: usize = 255;
/// Symbolic links followed in a row inside an archive (old-style `docker save`
/// links identical layers to one copy).
const MAX_LINK_HOPS: usize = 8;

/// What a `docker save` archive holds, as far as the controller needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// `sha256:<config hex>`.
    pub image_id: String,
    pub tags: Vec<String>,
    pub layers: usize,
}

/// Why an archive is not one `docker save` image.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("not a docker save archive: cannot read it as a tar file ({0})")]
    NotTar(String),
    #[error("not a docker save archive: manifest.json missing")]
    NoManifest,
    #[error("not a docker save archive: manifest.json is invalid ({0})")]
    BadManifest(String),
    #[error("not a docker save archive: manifest.json lists no image")]
    NoImage,
    #[error("the archive holds {0} images; push one image per archive (`docker save NAME:TAG -o FILE.tar`)")]
    SeveralImages(usize),
    #[error("not a docker save archive: it has more than {MAX_MEMBERS} files")]
    TooManyMembers,
    #[error("not a docker save archive: the image config {0:?} named in manifest.json is missing")]
    ConfigMissing(String),
    #[error(
        "not a docker save archive: the image config's name {0:?} does not carry its sha256 digest"
    )]
    ConfigName(String),
    #[error("the archive is damaged: the image config {path:?} has sha256 {actual}, not the {expected} its name says")]
    ConfigDigest {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("not a docker save archive: layer {0:?} named in manifest.json is missing")]
    LayerMissing(String),
    #[error("not a docker save archive: the image config is invalid ({0})")]
    BadConfig(String),
    #[error("the archive is damaged: layer {path:?} has digest {actual}, not {expected}")]
    LayerDigest {
        path: String,
        expected: String,
        actual: String,
    },
}

/// One member of an archive, as far as inspection cares.
#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// A member path with `./` prefixes, empty and `.` components, and a trailing `/`
/// removed; `..` is resolved, and `None` if it climbs out of the archive.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = vec![];
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Reads a `docker save` archive: `manifest.json` must list exactly one image whose
/// config is present and matches the sha256 its name carries, and whose layers are
/// all present and match the config's `rootfs.diff_ids`. Works for both the classic layout (`<hex>.json`, `<id>/layer.tar`)
/// and the OCI one of Docker 25+ (`blobs/sha256/<hex>`).
pub fn inspect<R: Read + Seek>(reader: R) -> Result<ArchiveInfo, InspectError> {
    let not_tar = |e: std::io::Error| InspectError::NotTar(e.to_string());
    let mut archive = tar::Archive::new(reader);
    let mut members: HashMap<String, Member> = HashMap::new();
    let mut manifest: Option<Vec<u8>> = None;
    {
        let entries = archive.entries_with_seek().map_err(not_tar)?;
        for entry in entries {
            let mut entry = entry.map_err(not_tar)?;
            if members.len() >= MAX_MEMBERS {
                return Err(InspectError::TooManyMembers);
            }
            let Some(name) = entry.path().ok().and_then(|p| normalize(&p)) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // A symlink is relative to its own directory; a hard link names a
                // member from the archive's root.
                let target = if kind.is_symlink() {
                    let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                    normalize(&dir.join(target))
                } else {
                    normalize(Path::new(&target))
                };
                target.map_or(Member::Other, Member::Link)
            } else {
                Member::Other
            };
            if name == "manifest.json" && kind.is_file() {
                if entry.size() > MAX_MANIFEST_BYTES {
                    return Err(InspectError::BadManifest(format!(
                        "larger than {MAX_MANIFEST_BYTES} bytes"
                    )));
                }
                let mut buf = Vec::new();
                (&mut entry)
                    .take(MAX_MANIFEST_BYTES)
                    .read_to_end(&mut buf)
                    .map_err(not_tar)?;
                manifest = Some(buf);
            }
            members.insert(name, member);
        }
    }
    let manifest = manifest.ok_or(InspectError::NoManifest)?;
    let images: Vec<ManifestEntry> =
        serde_json::from_slice(&manifest).map_err(|e| InspectError::BadManifest(e.to_string()))?;
    let image = match images.len() {
        0 => return Err(InspectError::NoImage),
        1 => &images[0],
        n => return Err(InspectError::SeveralImages(n)),
    };

    let resolve = |path: &str| -> Option<(u64, u64)> {
        let mut at = normalize(Path::new(path))?;
        for _ in 0..=MAX_LINK_HOPS {
            match members.get(&at)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Link(t) => at = t.clone(),
                Member::Other => return None,
            }
        }
        None
    };

    let config_name = Path::new(&image.config)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected = config_name
        .strip_suffix(".json")
        .unwrap_or(&config_name)
        .to_string();
    if !is_sha256_hex(&expected) {
        return Err(InspectError::ConfigName(image.config.clone()));
    }
    let (config_at, config_size) =
        resolve(&image.config).ok_or_else(|| InspectError::ConfigMissing(image.config.clone()))?;
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let at = resolve(layer).ok_or_else(|| InspectError::LayerMissing(layer.clone()))?;
        layers.push((layer, at));
    }
    let tags = image.repo_tags.clone().unwrap_or_default();
    if tags.len() > MAX_TAGS {
        return Err(InspectError::BadManifest(format!(
            "{} tags; at most {MAX_TAGS}",
            tags.len()
        )));
    }
    if let Some(t) = tags
        .iter()
        .find(|t| t.is_empty() || t.len() > MAX_TAG_LEN || t.chars().any(char::is_control))
    {
        return Err(InspectError::BadManifest(format!(
            "invalid tag {:?}",
            t.chars().take(MAX_TAG_LEN).collect::<String>()
        )));
    }

    let mut r = archive.into_inner();
    if config_size > MAX_CONFIG_BYTES {
        return Err(InspectError::BadConfig(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    let config = read_member(&mut r, config_at, config_size, &image.config)?;
    let actual = hex::encode(sha2::Sha256::digest(&config));
    if actual != expected {
        return Err(InspectError::ConfigDigest {
            path: image.config.clone(),
            expected,
            actual,
        });
    }
    let parsed: ImageConfig =
        serde_json::from_slice(&config).map_err(|e| InspectError::BadConfig(e.to_string()))?;
    let diff_ids = parsed.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(InspectError::BadConfig(format!(
            "it lists {} layers, manifest.json {}",
            diff_ids.len(),
            layers.len()
        )));
    }
    // What `docker load` would find out on some host at launch time, found out now:
    // each layer must be the one the config names. One flipped byte fails here.
    for ((layer, (at, size)), diff_id) in layers.into_iter().zip(diff_ids) {
        // A compressed layer (written by a containerd image store, or another tool)
        // is checked against the digest in its blob name when it has one; Docker
        // checks the uncompressed bytes against the config when it loads it.
        let packed = compressed(&mut r, at, size)?;
        let expected = match (packed, blob_digest(layer)) {
            (false, _) => diff_id,
            (true, Some(hex)) => format!("sha256:{hex}"),
            (true, None) => continue,
        };
        r.seek(SeekFrom::Start(at)).map_err(not_tar)?;
        let mut hasher = sha2::Sha256::new();
        let copied = std::io::copy(&mut (&mut r).take(size), &mut hasher).map_err(not_tar)?;
        if copied != size {
            return Err(InspectError::NotTar(format!(
                "layer {layer:?} is cut short"
            )));
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != expected {
            return Err(InspectError::LayerDigest {
                path: layer.clone(),
                expected,
                actual,
            });
        }
    }
    Ok(ArchiveInfo {
        image_id: format!("sha256:{actual}"),
        tags,
        layers: image.layers.len(),
    })
}

/// The part of an image config inspection reads.
#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Reads a (small, bounded by the caller) member whole.
fn read_member<R: Read + Seek>(
    r: &mut R,
    at: u64,
    size: u64,
    name: &str,
) -> Result<Vec<u8>, InspectError> {
    let not_tar = |e: std::io::Error| InspectError::NotTar(e.to_string());
    r.seek(SeekFrom::Start(at)).map_err(not_tar)?;
    let mut buf = Vec::new();
    r.take(size).read_to_end(&mut buf).map_err(not_tar)?;
    if buf.len() as u64 != size {
        return Err(InspectError::NotTar(format!("{name:?} is cut short")));
    }
    Ok(buf)
}

/// The hex digest in an OCI blob path (`blobs/sha256/<hex>`), if that is what it is.
fn blob_digest(path: &str) -> Option<&str> {
    let (dir, hex) = path.rsplit_once('/')?;
    (dir.ends_with("sha256") && is_sha256_hex(hex)).then_some(hex)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether a member starts like a gzip or zstd stream.
fn compressed<R: Read + Seek>(r: &mut R, at: u64, size: u64) -> Result<bool, InspectError> {
    let not_tar = |e: std::io::Error| InspectError::NotTar(e.to_string());
    r.seek(SeekFrom::Start(at)).map_err(not_tar)?;
    let mut magic = Vec::with_capacity(4);
    r.take(size.min(4))
        .read_to_end(&mut magic)
        .map_err(not_tar)?;
    Ok(magic.starts_with(&[0x1f, 0x8b]) || magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]))
}

/// Archives for tests: a tar builder and classic `docker save` layouts.
#[cfg(test)]
pub(crate) mod fixtures {
    use sha2::Digest;

    /// A tar builder for test archives.
    pub struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        pub fn new() -> Self {
            Tar(tar::Builder::new(Vec::new()))
        }
        pub fn file(mut self, path: &str, data: &[u8]) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }
        pub fn dir(mut self, path: &str) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Directory);
            h.set_cksum();
            self.0.append_data(&mut h, path, &[][..]).unwrap();
            self
        }
        pub fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o777);
            h.set_entry_type(tar::EntryType::Symlink);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }
        pub fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    pub fn sha256_hex(b: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(b))
    }

    pub const CONFIG: &[u8] =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

    /// An image config naming `layers` as its layers.
    pub fn config_for(layers: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<String> = layers
            .iter()
            .map(|l| format!("sha256:{}", sha256_hex(l)))
            .collect();
        serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ids}})
        .to_string()
        .into_bytes()
    }

    pub const LAYER: &[u8] = b"layer bytes";

    /// A classic `docker save` archive (Docker < 25): `<hex>.json`, `<id>/layer.tar`,
    /// with a second layer linked to the first as Docker does for identical layers.
    pub fn classic_with(config: &[u8], tags: &[&str]) -> (Vec<u8>, String) {
        let hex = sha256_hex(config);
        let manifest = serde_json::json!([{
            "Config": format!("{hex}.json"),
            "RepoTags": tags,
            "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"],
        }]);
        let tar = Tar::new()
            .dir("aaaa/")
            .file("aaaa/layer.tar", LAYER)
            .file("aaaa/VERSION", b"1.0")
            .dir("bbbb/")
            .symlink("bbbb/layer.tar", "../aaaa/layer.tar")
            .file(&format!("{hex}.json"), config)
            .file("repositories", b"{}")
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        (tar, hex)
    }

    pub fn classic(tags: &[&str]) -> (Vec<u8>, String) {
        classic_with(&config_for(&[LAYER, LAYER]), tags)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    use std::io::Cursor;

    #[test]
    fn a_classic_archive_is_read() {
        let (tar, hex) = classic(&["course/python:1", "course/python:latest"]);
        let info = inspect(Cursor::new(tar)).unwrap();
        assert_eq!(info.image_id, format!("sha256:{hex}"));
        assert_eq!(info.tags, ["course/python:1", "course/python:latest"]);
        assert_eq!(info.layers, 2);
    }

    #[test]
    fn an_oci_layout_archive_is_read() {
        let layer = b"layer";
        let config = config_for(&[layer]);
        let hex = sha256_hex(&config);
        let lhex = sha256_hex(layer);
        let manifest = serde_json::json!([{
            "Config": format!("blobs/sha256/{hex}"),
            "RepoTags": null,
            "Layers": [format!("blobs/sha256/{lhex}")],
        }]);
        let tar = Tar::new()
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .file("index.json", b"{}")
            .file("manifest.json", manifest.to_string().as_bytes())
            .dir("blobs/")
            .dir("blobs/sha256/")
            .file(&format!("./blobs/sha256/{lhex}"), layer)
            .file(&format!("blobs/sha256/{hex}"), &config)
            .finish();
        let info = inspect(Cursor::new(tar)).unwrap();
        assert_eq!(info.image_id, format!("sha256:{hex}"));
        assert!(info.tags.is_empty());
    }

    #[test]
    fn a_missing_manifest_is_named() {
        let tar = Tar::new().file("hello.txt", b"hi").finish();
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a docker save archive: manifest.json missing"
        );
    }

    #[test]
    fn a_missing_layer_is_named() {
        let hex = sha256_hex(CONFIG);
        let manifest = serde_json::json!([{
            "Config": format!("{hex}.json"), "RepoTags": ["x:1"], "Layers": ["cccc/layer.tar"],
        }]);
        let tar = Tar::new()
            .file(&format!("{hex}.json"), CONFIG)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert!(
            matches!(e, InspectError::LayerMissing(ref l) if l == "cccc/layer.tar"),
            "{e}"
        );
        // A dangling link is as missing as no file.
        let manifest = serde_json::json!([{
            "Config": format!("{hex}.json"), "Layers": ["dddd/layer.tar"],
        }]);
        let tar = Tar::new()
            .file(&format!("{hex}.json"), CONFIG)
            .symlink("dddd/layer.tar", "../nowhere/layer.tar")
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::LayerMissing(_)
        ));
    }

    #[test]
    fn a_config_that_does_not_match_its_name_is_refused() {
        let hex = sha256_hex(b"something else");
        let manifest = serde_json::json!([{"Config": format!("{hex}.json"), "Layers": []}]);
        let tar = Tar::new()
            .file(&format!("{hex}.json"), CONFIG)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert!(matches!(e, InspectError::ConfigDigest { .. }), "{e}");
        assert!(e.to_string().contains("damaged"), "{e}");

        let manifest = serde_json::json!([{"Config": "config.json", "Layers": []}]);
        let tar = Tar::new()
            .file("config.json", CONFIG)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::ConfigName(_)
        ));

        let manifest =
            serde_json::json!([{"Config": format!("{}.json", sha256_hex(CONFIG)), "Layers": []}]);
        let tar = Tar::new()
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::ConfigMissing(_)
        ));
    }

    #[test]
    fn a_layer_that_does_not_match_the_config_is_refused() {
        let (tar, _) = classic_with(&config_for(&[LAYER, b"other"]), &["t:1"]);
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert!(
            matches!(e, InspectError::LayerDigest { ref path, .. } if path == "bbbb/layer.tar"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("the archive is damaged: layer \"bbbb/layer.tar\" has digest sha256:"),
            "{e}"
        );
        let (tar, _) = classic_with(&config_for(&[LAYER]), &["t:1"]);
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::BadConfig(_)
        ));
        // One flipped byte inside a layer.
        let (mut tar, _) = classic(&["t:1"]);
        let at = tar.windows(LAYER.len()).position(|w| w == LAYER).unwrap();
        tar[at] ^= 0x20;
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::LayerDigest { .. }
        ));
        // Compressed layers are Docker's to check.
        let gz: &[u8] = &[0x1f, 0x8b, 8, 0, 1, 2, 3];
        let config = config_for(&[b"the uncompressed layer"]);
        let hex = sha256_hex(&config);
        let manifest =
            serde_json::json!([{"Config": format!("{hex}.json"), "Layers": ["l.tar.gz"]}]);
        let tar = Tar::new()
            .file("l.tar.gz", gz)
            .file(&format!("{hex}.json"), &config)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(inspect(Cursor::new(tar)).is_ok());
        // ... but a compressed OCI blob must match the digest in its name.
        let blob = format!("blobs/sha256/{}", sha256_hex(b"not these bytes"));
        let manifest = serde_json::json!([{"Config": format!("{hex}.json"), "Layers": [blob]}]);
        let tar = Tar::new()
            .file(&blob, gz)
            .file(&format!("{hex}.json"), &config)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::LayerDigest { .. }
        ));
    }

    #[test]
    fn two_images_are_refused() {
        let hex = sha256_hex(CONFIG);
        let one =
            serde_json::json!({"Config": format!("{hex}.json"), "RepoTags": ["a:1"], "Layers": []});
        let manifest = serde_json::json!([one.clone(), one]);
        let tar = Tar::new()
            .file(&format!("{hex}.json"), CONFIG)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the archive holds 2 images; push one image per archive (`docker save NAME:TAG -o FILE.tar`)"
        );
    }

    #[test]
    fn garbage_and_bad_manifests_are_refused() {
        let e = inspect(Cursor::new(vec![0x5au8; 4096])).unwrap_err();
        assert!(matches!(e, InspectError::NotTar(_)), "{e}");
        let tar = Tar::new().file("manifest.json", b"{not json").finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::BadManifest(_)
        ));
        let tar = Tar::new().file("manifest.json", b"[]").finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::NoImage
        ));
    }

    #[test]
    fn paths_are_normalised_inside_the_archive() {
        assert_eq!(normalize(Path::new("./a/./b/")).unwrap(), "a/b");
        assert_eq!(
            normalize(Path::new("b/../a/layer.tar")).unwrap(),
            "a/layer.tar"
        );
        assert_eq!(normalize(Path::new("../etc/passwd")), None);
    }
}
