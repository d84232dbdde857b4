//! Small local images built without any registry, cached by tag.
//!
//! [`ensure_image`] builds a root file system in a temporary directory with a
//! caller-supplied function and turns it into an image with `docker import`; if the tag
//! already exists nothing is built. Concurrent test processes serialise on a lock
//! directory, so an image is built once per machine.
//!
//! [`busybox_image`] is the common case: Debian's static busybox and its applets.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn image_exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A lock held while it lives: an atomically created directory.
struct BuildLock(PathBuf);

impl BuildLock {
    fn acquire(tag: &str) -> Self {
        let safe: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join(format!("cairn-image-lock-{safe}"));
        let start = Instant::now();
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => return BuildLock(path),
                Err(_) if start.elapsed() > Duration::from_secs(300) => {
                    // A builder that died holding the lock: take it over.
                    let _ = std::fs::remove_dir(&path);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Makes sure `tag` exists, building it from a root file system that `build` fills.
/// `cmd` is the image's default command as a JSON array, e.g. `["/bin/sh"]`.
pub fn ensure_image(tag: &str, cmd: &str, build: impl FnOnce(&Path)) -> String {
    if image_exists(tag) {
        return tag.to_string();
    }
    let _lock = BuildLock::acquire(tag);
    if image_exists(tag) {
        return tag.to_string();
    }
    let root = tempfile::tempdir().expect("temp dir");
    build(root.path());
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(root.path())
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    let out = Command::new("docker")
        .args(["import", "-c", &format!("CMD {cmd}"), "-", tag])
        .stdin(tar.stdout.take().expect("tar stdout"))
        .output()
        .expect("run docker import");
    let tar_status = tar.wait().expect("wait for tar");
    assert!(
        tar_status.success(),
        "tar of the root file system failed: {tar_status}"
    );
    assert!(
        out.status.success(),
        "docker import {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tag.to_string()
}

/// Fills `root` with Debian's static busybox, a link per applet, and minimal /etc.
pub fn busybox_rootfs(root: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox missing: install Debian's busybox-static (apt-get install busybox-static)"
    );
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    let bin = root.join("bin");
    for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "root", "var/tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod tmp");
}

/// The busybox test image (built on first use).
pub fn busybox_image() -> String {
    ensure_image("cairn-test/busybox:1", r#"["/bin/sh"]"#, busybox_rootfs)
}
