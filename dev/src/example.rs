//! The example image, made from what the project ships: this very binary, the
//! shared libraries it has mapped and its dynamic loader, imported into Docker as a
//! one-layer image whose command is the hidden `serve-example` subcommand. Nothing
//! is installed or pulled, so a fresh machine can launch something offline in its
//! first minute.
//!
//! The image is cached under a tag derived from the binary's BLAKE3 hash, and
//! [`HELLO_IMAGE`] (what the `hello` blueprint names) is pointed at it, so a rebuilt
//! binary brings a new image and the blueprint follows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bollard::query_parameters::{CreateImageOptions, TagImageOptions};
use bollard::Docker;
use futures::StreamExt;

/// Where the example image's repository lives; not in any registry.
const REPO: &str = "cairn-example/hello";
/// The stable tag the `hello` blueprint uses.
const STABLE_TAG: &str = "1";
/// The example web app's image, as blueprints name it.
pub const HELLO_IMAGE: &str = "cairn-example/hello:1";
/// The port the example app listens on inside its container.
pub const APP_PORT: u16 = 8080;
/// Where this binary goes inside the image.
const EXE_IN_IMAGE: &str = "app/cairn-dev";

/// Why the example image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the image archive: {0}")]
    Archive(std::io::Error),
    #[error("{what}: {source}")]
    Docker {
        what: &'static str,
        source: bollard::errors::Error,
    },
    #[error("building the image archive: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Makes sure [`HELLO_IMAGE`] is this binary's example image, importing it first if
/// this binary has not been imported yet.
pub async fn ensure_hello_image(docker: &Docker) -> Result<(), ExampleError> {
    const EXE: &str = "/proc/self/exe";
    let hash = tokio::task::spawn_blocking(|| cairn_shared::images::blake3_file(Path::new(EXE)))
        .await?
        .map_err(|source| ExampleError::Read {
            path: EXE.into(),
            source,
        })?;
    let tag = format!("bin-{}", &hash[..16.min(hash.len())]);
    let cached = format!("{REPO}:{tag}");
    if docker.inspect_image(&cached).await.is_err() {
        let rootfs = tokio::task::spawn_blocking(rootfs_of_this_process).await??;
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(REPO.into()),
            tag: Some(tag.clone()),
            changes: vec![
                format!(r#"CMD ["/{EXE_IN_IMAGE}", "serve-example", "--port", "{APP_PORT}"]"#),
                format!("ENV LD_LIBRARY_PATH={}", rootfs.library_path),
            ],
            ..Default::default()
        };
        let mut stream = docker.create_image(
            Some(opts),
            Some(bollard::body_full(rootfs.tar.into())),
            None,
        );
        while let Some(item) = stream.next().await {
            item.map_err(|source| ExampleError::Docker {
                what: "importing the example image",
                source,
            })?;
        }
    }
    let opts = TagImageOptions {
        repo: Some(REPO.into()),
        tag: Some(STABLE_TAG.into()),
    };
    docker
        .tag_image(&cached, Some(opts))
        .await
        .map_err(|source| ExampleError::Docker {
            what: "tagging the example image",
            source,
        })
}

/// The example image's root file system as a tar archive, and the library search
/// path that finds its libraries.
#[derive(Debug)]
pub struct Rootfs {
    pub tar: Vec<u8>,
    pub library_path: String,
}

/// Builds the root file system from the running process: its executable, the
/// shared objects it has mapped (`/proc/self/maps`), and its ELF interpreter at the
/// path the executable names.
pub fn rootfs_of_this_process() -> Result<Rootfs, ExampleError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ExampleError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let exe = read(Path::new("/proc/self/exe"))?;
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|source| ExampleError::Read {
        path: "/proc/self/maps".into(),
        source,
    })?;
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![];
    for lib in mapped_libraries(&maps) {
        let data = read(&lib)?;
        files.push((lib, data));
    }
    if let Some(interp) = interpreter(&exe) {
        let interp = PathBuf::from(interp);
        if !files.iter().any(|(p, _)| *p == interp) {
            // Read through any symlink: the image holds the loader itself there.
            let data = read(&interp)?;
            files.push((interp, data));
        }
    }
    let library_path = files
        .iter()
        .filter_map(|(p, _)| p.parent())
        .map(|d| d.display().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(":");
    let tar = build_tar(&exe, &files).map_err(ExampleError::Archive)?;
    Ok(Rootfs { tar, library_path })
}

/// The shared objects a process has mapped, from the text of its `/proc/PID/maps`:
/// absolute paths whose file name has `.so` in it, each once, in order.
pub fn mapped_libraries(maps: &str) -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    maps.lines()
        // address perms offset dev inode pathname; the path may hold spaces.
        .filter_map(|line| line.splitn(6, char::is_whitespace).nth(5))
        .map(str::trim)
        .filter(|p| p.starts_with('/') && !p.ends_with("(deleted)"))
        .map(PathBuf::from)
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".so"))
        })
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

/// The ELF interpreter (`PT_INTERP`) a 64-bit little-endian executable names, if
/// any; a static executable has none.
pub fn interpreter(elf: &[u8]) -> Option<String> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| {
        let v = u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?);
        usize::try_from(v).ok()
    };
    // Magic, 64-bit class, little-endian.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = u64_at(0x20)?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    (0..phnum).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != PT_INTERP {
            return None;
        }
        let offset = u64_at(ph + 8)?;
        let size = u64_at(ph + 32)?;
        let raw = elf.get(offset..offset.checked_add(size)?)?;
        let text = std::str::from_utf8(raw).ok()?.trim_end_matches('\0');
        Some(text.to_string())
    })
}

/// The tar of the root file system: `files` at their own paths, the executable at
/// [`EXE_IN_IMAGE`], and the few files a process expects.
fn build_tar(exe: &[u8], files: &[(PathBuf, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    let mut add_dir = |tar: &mut tar::Builder<Vec<u8>>, path: &Path, mode: u32| {
        if !dirs.insert(path.to_path_buf()) {
            return Ok(());
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_cksum();
        tar.append_data(&mut h, path, std::io::empty())
    };
    let add_file = |tar: &mut tar::Builder<Vec<u8>>, path: &Path, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        tar.append_data(&mut h, path, data)
    };
    for d in ["app", "etc", "proc", "sys", "dev"] {
        add_dir(&mut tar, Path::new(d), 0o755)?;
    }
    add_dir(&mut tar, Path::new("tmp"), 0o1777)?;
    add_file(&mut tar, Path::new(EXE_IN_IMAGE), exe, 0o755)?;
    for (path, data) in files {
        let relative = path.strip_prefix("/").unwrap_or(path);
        // Parent directories first, outermost first.
        let mut parents: Vec<&Path> = relative.ancestors().skip(1).collect();
        parents.reverse();
        for parent in parents.into_iter().filter(|p| !p.as_os_str().is_empty()) {
            add_dir(&mut tar, parent, 0o755)?;
        }
        add_file(&mut tar, relative, data, 0o755)?;
    }
    add_file(
        &mut tar,
        Path::new("etc/passwd"),
        b"root:x:0:0:root:/:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    )?;
    add_file(
        &mut tar,
        Path::new("etc/group"),
        b"root:x:0:\nnogroup:x:65534:\n",
        0o644,
    )?;
    tar.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_give_each_shared_object_once() {
        let maps = "\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 123 /home/me/target/release/cairn-dev
7f0000000000-7f0000001000 r--p 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000001000-7f0000002000 r-xp 00001000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000003000-7f0000004000 r--p 00000000 fd:01 789 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7f0000005000-7f0000006000 rw-p 00000000 00:00 0
7f0000006000-7f0000007000 r--p 00000000 fd:01 999 /opt/a dir/libspace.so.1
7f0000007000-7f0000008000 r--p 00000000 fd:01 998 /usr/lib/libgone.so.1 (deleted)
7ffc00000000-7ffc00001000 r-xp 00000000 00:00 0 [vdso]
";
        assert_eq!(
            mapped_libraries(maps),
            vec![
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
                PathBuf::from("/opt/a dir/libspace.so.1"),
            ]
        );
    }

    #[test]
    fn the_test_binary_names_an_interpreter_that_exists() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let interp = interpreter(&exe).expect("a dynamically linked test binary");
        assert!(Path::new(&interp).exists(), "{interp}");
        assert_eq!(interpreter(b"\x7fELF\x01\x01 too short"), None);
        assert_eq!(interpreter(&exe[..64]), None);
    }

    #[test]
    fn rootfs_holds_the_executable_its_libraries_and_loader() {
        let rootfs = rootfs_of_this_process().unwrap();
        let mut archive = tar::Archive::new(&rootfs.tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let interp = interpreter(&exe).unwrap();
        for want in [
            EXE_IN_IMAGE,
            "etc/passwd",
            "tmp",
            interp.trim_start_matches('/'),
        ] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == want),
                "{want} missing from {names:?}"
            );
        }
        assert!(
            names.iter().any(|n| n.contains("libc.so")),
            "libc missing from {names:?}"
        );
        assert!(rootfs.library_path.contains('/'), "{}", rootfs.library_path);
    }
}
