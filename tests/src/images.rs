//! Small local images built without any registry, cached by tag.
//!
//! CI machines cannot pull, so every image a test runs is made here: [`ensure_image`]
//! fills a root file system in a temporary directory with a caller-supplied function
//! and turns it into an image with `docker import`. If the tag already exists nothing
//! is built, so a tag names one recipe: change the recipe, bump the tag.
//!
//! Test binaries run in parallel, as threads and as processes, and all of them may ask
//! for the same image at once. Threads queue on an in-process mutex; processes on a
//! lock directory (`mkdir` is atomic) that records its owner's pid, so a lock left by a
//! killed test run is taken over instead of blocking every later run.
//!
//! [`busybox_image`] is the common case: Debian's static busybox and its applets.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The busybox test image's tag; bump it when [`busybox_rootfs`] changes.
pub const BUSYBOX_TAG: &str = "cairn-test/busybox:1";

/// Where Debian's `busybox-static` package puts its binary.
const BUSYBOX: &str = "/bin/busybox";

/// Longest wait for another builder before giving up with a message.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// Serialises builders within this process; the lock directory does so across
/// processes.
static BUILDING: Mutex<()> = Mutex::new(());

/// Whether the engine has an image called `tag`.
pub fn image_exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A cross-process lock held while it lives: an atomically created directory with
/// an `owner` file holding the owner's pid.
#[derive(Debug)]
struct BuildLock(PathBuf);

impl BuildLock {
    fn path_for(name: &str) -> PathBuf {
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        std::env::temp_dir().join(format!("cairn-image-lock-{safe}"))
    }

    fn acquire(name: &str) -> Self {
        Self::acquire_at(Self::path_for(name))
    }

    fn acquire_at(path: PathBuf) -> Self {
        let start = Instant::now();
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    // Between mkdir and this write the owner is unknown; waiters treat
                    // that as "alive" and keep waiting.
                    let _ = std::fs::write(path.join("owner"), std::process::id().to_string());
                    return BuildLock(path);
                }
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    panic!("cannot create the image build lock {}: {e}", path.display())
                }
                Err(_) => {}
            }
            if Self::owner_is_dead(&path) {
                // Left by a killed run. Removing it races with other waiters doing the
                // same; the loser's create_dir simply fails and it waits again.
                let _ = std::fs::remove_file(path.join("owner"));
                let _ = std::fs::remove_dir(&path);
                continue;
            }
            assert!(
                start.elapsed() < LOCK_WAIT,
                "waited {} s for the image build lock {}; if no test is running, remove it",
                LOCK_WAIT.as_secs(),
                path.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn owner_is_dead(path: &Path) -> bool {
        let Ok(text) = std::fs::read_to_string(path.join("owner")) else {
            return false;
        };
        match text.trim().parse::<u32>() {
            Ok(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
            // Written by someone else entirely; do not guess.
            Err(_) => false,
        }
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("owner"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Makes sure `tag` exists, building it from a root file system that `build` fills;
/// the image's default command is `/bin/sh`. Returns `tag`.
pub fn ensure_image(tag: &str, build: impl FnOnce(&Path)) -> String {
    ensure_image_with_cmd(tag, &["/bin/sh"], build)
}

/// [`ensure_image`] with a given default command (the image's `CMD`, exec form).
pub fn ensure_image_with_cmd(tag: &str, cmd: &[&str], build: impl FnOnce(&Path)) -> String {
    if image_exists(tag) {
        return tag.to_string();
    }
    // A panicking builder poisons the mutex but leaves nothing half-made behind (the
    // tag only appears once `docker import` succeeds), so later callers go on.
    let _in_process = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let _across_processes = BuildLock::acquire(tag);
    if image_exists(tag) {
        return tag.to_string();
    }
    let root = tempfile::tempdir().expect("create a temporary directory for the root fs");
    build(root.path());
    import(root.path(), tag, cmd);
    tag.to_string()
}

/// `tar -C root -c . | docker import -c 'CMD [...]' - tag`, with every file owned by
/// root in the image whoever runs the tests.
fn import(root: &Path, tag: &str, cmd: &[&str]) {
    let cmd = serde_json::to_string(cmd).expect("a list of strings is JSON");
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar (is it installed?)");
    let tar_out = tar.stdout.take().expect("tar's stdout is piped");
    let out = Command::new("docker")
        .args(["import", "-c", &format!("CMD {cmd}"), "-", tag])
        .stdin(tar_out)
        .output();
    // Reap tar before looking at docker's result, so no zombie is left either way.
    let tar_status = tar.wait().expect("wait for tar");
    let out = out.expect("run docker import");
    assert!(
        tar_status.success(),
        "tar of the root file system failed: {tar_status}"
    );
    assert!(
        out.status.success(),
        "docker import {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `bytes` is an ELF executable without a program interpreter, i.e. one that
/// runs in an image with no libc. `None` if it is not ELF.
pub fn is_static_elf(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if bytes.get(..4)? != b"\x7fELF" {
        return None;
    }
    let little = match bytes.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let uint = |at: usize, len: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(len)?)?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if little { b[len - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    // (e_phoff, e_phentsize, e_phnum) by class.
    let (phoff, phentsize, phnum) = match bytes.get(4)? {
        1 => (uint(0x1c, 4)?, uint(0x2a, 2)?, uint(0x2c, 2)?),
        2 => (uint(0x20, 8)?, uint(0x36, 2)?, uint(0x38, 2)?),
        _ => return None,
    };
    for i in 0..phnum {
        let at = usize::try_from(phoff.checked_add(i.checked_mul(phentsize)?)?).ok()?;
        if uint(at, 4)? == u64::from(PT_INTERP) {
            return Some(false);
        }
    }
    Some(true)
}

/// Fills `root` with Debian's static busybox, a link per applet (`/bin/sh` among
/// them), `/tmp`, and a minimal `/etc` with root and nobody.
pub fn busybox_rootfs(root: &Path) {
    let busybox = Path::new(BUSYBOX);
    let bytes = std::fs::read(busybox).unwrap_or_else(|e| {
        panic!(
            "cannot read {BUSYBOX} ({e}): install busybox-static (apt-get install busybox-static)"
        )
    });
    assert_eq!(
        is_static_elf(&bytes),
        Some(true),
        "{BUSYBOX} is not a static executable, so it cannot run in an empty image: install busybox-static (apt-get install busybox-static)"
    );
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("run busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "root", "var/tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("create a root fs directory");
    }
    let bin = root.join("bin");
    std::fs::write(bin.join("busybox"), &bytes).expect("copy busybox");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod busybox");
    let applets = String::from_utf8_lossy(&list.stdout);
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .chain(["sh"])
    {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).expect("link a busybox applet");
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("write /etc/passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .expect("write /etc/group");
    for d in ["tmp", "var/tmp"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod a tmp directory");
    }
}

/// The busybox test image, [`BUSYBOX_TAG`], built on first use.
pub fn busybox_image() -> String {
    ensure_image(BUSYBOX_TAG, busybox_rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn recognises_static_and_dynamic_executables() {
        // Test binaries are dynamically linked on glibc targets.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        if cfg!(target_env = "gnu") {
            assert_eq!(is_static_elf(&me), Some(false));
        }
        assert_eq!(is_static_elf(b"#!/bin/sh\n"), None);
        assert_eq!(is_static_elf(b"\x7fELF"), None, "truncated");
        if let Ok(bytes) = std::fs::read(BUSYBOX) {
            // Only busybox-static's binary is static; the plain busybox package's is
            // not, which is exactly what busybox_rootfs refuses.
            let is_static_pkg = Command::new("dpkg")
                .args(["-s", "busybox-static"])
                .output()
                .is_ok_and(|o| o.status.success());
            if is_static_pkg {
                assert_eq!(is_static_elf(&bytes), Some(true));
            }
        }
    }

    #[test]
    fn lock_waits_for_its_holder_and_takes_over_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = BuildLock::acquire_at(path.clone());
        let released = Arc::new(AtomicUsize::new(0));
        let waiter = {
            let (path, released) = (path.clone(), released.clone());
            std::thread::spawn(move || {
                let _l = BuildLock::acquire_at(path);
                released.load(Ordering::SeqCst)
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        released.store(1, Ordering::SeqCst);
        drop(held);
        assert_eq!(
            waiter.join().unwrap(),
            1,
            "the waiter got in only after release"
        );
        assert!(!path.exists());

        // A lock whose owner has exited is taken over.
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("owner"), dead.to_string()).unwrap();
        let start = Instant::now();
        let _l = BuildLock::acquire_at(path.clone());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn concurrent_callers_build_once() {
        if !crate::docker::require_docker() {
            return;
        }
        let tag = format!("cairn-test/ensure-once-{}:1", std::process::id());
        let builds = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (tag, builds) = (tag.clone(), builds.clone());
                std::thread::spawn(move || {
                    ensure_image_with_cmd(&tag, &["/hello"], |root| {
                        builds.fetch_add(1, Ordering::SeqCst);
                        std::fs::write(root.join("hello"), "hi").unwrap();
                    })
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), tag);
        }
        let cmd =
            crate::docker::docker(&["image", "inspect", "--format", "{{json .Config.Cmd}}", &tag]);
        let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert_eq!(cmd, r#"["/hello"]"#);
    }

    #[test]
    fn busybox_rootfs_makes_a_working_image() {
        if !crate::docker::require_docker() {
            return;
        }
        // A private tag, so the recipe is tested even where BUSYBOX_TAG is cached.
        let tag = format!("cairn-test/busybox-check-{}:1", std::process::id());
        ensure_image(&tag, busybox_rootfs);
        let out = Command::new("docker")
            .args(["run", "--rm", "--user", "nobody", &tag])
            .args(["sh", "-c", "touch /tmp/x && id -un && sleep 0"])
            .output()
            .unwrap();
        let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nobody");
    }
}
