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
//! [`jupyter_image`] is a real JupyterLab (debootstrap, then pip in a chroot), for
//! tests that must talk to the real thing.

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
pub(crate) struct BuildLock(PathBuf);

impl BuildLock {
    fn path_for(name: &str) -> PathBuf {
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        std::env::temp_dir().join(format!("cairn-image-lock-{safe}"))
    }

    pub(crate) fn acquire(name: &str) -> Self {
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
    let cmd = serde_json::to_string(cmd).expect("a list of strings is JSON");
    ensure_image_with_changes(tag, &[format!("CMD {cmd}")], build)
}

/// [`ensure_image`] with the given `docker import -c` changes (Dockerfile lines such
/// as `CMD [...]` or `ENV K=V`) instead of the default command.
pub fn ensure_image_with_changes(
    tag: &str,
    changes: &[String],
    build: impl FnOnce(&Path),
) -> String {
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
    import(root.path(), tag, changes);
    tag.to_string()
}

/// `tar -C root -c . | docker import -c CHANGE... - tag`, with every file owned by
/// root in the image whoever runs the tests.
pub(crate) fn import(root: &Path, tag: &str, changes: &[String]) {
    import_tree(root, tag, changes, true);
}

/// `tar -C root -c . | docker import -c CHANGE... - tag`; with `root_owned`, every
/// file is root's in the image whoever runs the tests, otherwise the files keep their
/// (numeric) owners.
pub(crate) fn import_tree(root: &Path, tag: &str, changes: &[String], root_owned: bool) {
    let mut tar = Command::new("tar");
    tar.arg("--numeric-owner");
    if root_owned {
        tar.args(["--owner=0", "--group=0"]);
    }
    let mut tar = tar
        .arg("-C")
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar (is it installed?)");
    let tar_out = tar.stdout.take().expect("tar's stdout is piped");
    let mut docker = Command::new("docker");
    docker.arg("import");
    for change in changes {
        docker.args(["-c", change]);
    }
    let out = docker.args(["-", tag]).stdin(tar_out).output();
    // Reap tar before looking at docker's result, so no zombie is left either way.
    let tar_status = tar.wait().expect("wait for tar");
    let out = out.expect("run docker import");
    assert!(
        tar_status.success(),
        "tar of {tag}'s root file system failed: {tar_status}"
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

/// The JupyterLab test image's tag; bump it when [`jupyter_rootfs`] changes.
pub const JUPYTER_TAG: &str = "cairn-test/jupyterlab:1";

/// The JupyterLab release in [`JUPYTER_TAG`]. Only it is pinned: its dependencies are
/// whatever pip resolves on the day the image is built.
pub const JUPYTERLAB_VERSION: &str = "4.6.6";

/// The image's start script: JupyterLab on port 8888 under `CAIRN_BASE_URL`, with the
/// token from `JUPYTER_TOKEN`. An empty token would switch authentication off, so
/// the script refuses to start without one.
pub const JUPYTER_START_SCRIPT: &str = r#"#!/bin/sh
# Starts JupyterLab for Cairn: base URL from CAIRN_BASE_URL, token from JUPYTER_TOKEN.
if [ -z "${JUPYTER_TOKEN:-}" ]; then
    echo "cairn-jupyter: JUPYTER_TOKEN is not set; refusing to start without authentication" >&2
    exit 64
fi
exec /opt/jupyter/bin/jupyter lab --ip=0.0.0.0 --port=8888 --no-browser --allow-root \
    --ServerApp.base_url="${CAIRN_BASE_URL:-/}" \
    --IdentityProvider.token="${JUPYTER_TOKEN}" \
    --ServerApp.root_dir=/home/jovyan
"#;

/// Where the start script lives in the image; it is the image's `CMD`.
const JUPYTER_START_PATH: &str = "/usr/local/bin/cairn-jupyter";

/// The Debian release the JupyterLab image is made from (its python3 is 3.11).
const DEBIAN_SUITE: &str = "bookworm";

/// The mirror used when the machine's apt sources name none for [`DEBIAN_SUITE`].
const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// The whole environment of commands run in the chroot, apart from the few build
/// settings added to it: nothing of the caller's environment leaks in.
const CHROOT_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the machine's CA bundle is copied inside the root, for pip, during the build.
const BUILD_CA_IN_ROOT: &str = "/etc/ssl/certs/cairn-build-host-ca.crt";

/// Host settings passed into the chroot when set, so a machine that reaches PyPI
/// only through a proxy or an index mirror can still build the image.
const FORWARDED_ENV: &[&str] = &[
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_DEFAULT_TIMEOUT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// The JupyterLab test image, [`JUPYTER_TAG`], built on first use (a few minutes:
/// debootstrap, then pip). Its `CMD` is [`JUPYTER_START_SCRIPT`].
pub fn jupyter_image() -> String {
    let changes = [
        format!(
            "CMD {}",
            serde_json::to_string(&[JUPYTER_START_PATH]).expect("a list of strings is JSON")
        ),
        "ENV PATH=/opt/jupyter/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            .to_string(),
    ];
    ensure_image_with_changes(JUPYTER_TAG, &changes, jupyter_rootfs)
}

/// Fills `root` with a minimal Debian [`DEBIAN_SUITE`] (debootstrap, from the mirror
/// the machine's apt uses), a venv at `/opt/jupyter` with JupyterLab
/// [`JUPYTERLAB_VERSION`], `/home/jovyan`, and the start script. Needs root and
/// `debootstrap`. Panics naming the step that failed, with its stderr.
pub fn jupyter_rootfs(root: &Path) {
    // debootstrap mounts /proc and /sys in the root while it installs and unmounts
    // them itself; this catches anything it leaves when killed, before the root is
    // removed. pip needs no /proc, so nothing else is ever mounted.
    let _unmount = UnmountUnder(root.to_path_buf());
    let started = Instant::now();
    let mirror = debian_mirror();
    eprintln!("building {JUPYTER_TAG}: debootstrap {DEBIAN_SUITE} from {mirror}");
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args([
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            DEBIAN_SUITE,
        ])
        .arg(root)
        .arg(&mirror);
    if let Err(e) = run_step(JUPYTER_TAG, "debootstrap", &mut debootstrap) {
        // debootstrap's own log says more than its stderr about a failed package.
        let log = std::fs::read(root.join("debootstrap/debootstrap.log"))
            .map(|l| format!("\n--- debootstrap/debootstrap.log (end) ---\n{}", tail(&l)))
            .unwrap_or_default();
        panic!("{e}{log}\n(is debootstrap installed? apt-get install debootstrap)");
    }

    let in_root = |p: &str| root.join(p.trim_start_matches('/'));
    copy_into("/etc/resolv.conf", &in_root("/etc/resolv.conf"));
    copy_into(
        "/etc/ssl/certs/ca-certificates.crt",
        &in_root(BUILD_CA_IN_ROOT),
    );

    eprintln!("building {JUPYTER_TAG}: pip install jupyterlab=={JUPYTERLAB_VERSION}");
    chroot_step(
        root,
        "create the venv /opt/jupyter",
        &["python3", "-m", "venv", "/opt/jupyter"],
    );
    chroot_step(
        root,
        &format!("pip install jupyterlab=={JUPYTERLAB_VERSION}"),
        &[
            "/opt/jupyter/bin/pip",
            "install",
            "--no-input",
            &format!("jupyterlab=={JUPYTERLAB_VERSION}"),
        ],
    );
    // traitlets takes `--Class.trait=value` for any class without complaint, so a
    // misspelt option in the start script would be ignored at run time: check here.
    chroot_step(
        root,
        "check the start script's options against jupyter_server",
        &[
            "/opt/jupyter/bin/python",
            "-c",
            "from jupyter_server.serverapp import ServerApp\n\
             from jupyter_server.auth.identity import IdentityProvider\n\
             s = set(ServerApp.class_trait_names())\n\
             missing = [n for n in ('ip', 'port', 'open_browser', 'allow_root', 'base_url', 'root_dir') if n not in s]\n\
             missing += [] if 'token' in IdentityProvider.class_trait_names() else ['IdentityProvider.token']\n\
             assert not missing, f'jupyter_server lacks {missing}'\n\
             from jupyter_server.serverapp import flags\n\
             assert 'no-browser' in flags and 'allow-root' in flags, 'missing --no-browser or --allow-root'\n",
        ],
    );
    chroot_step(root, "apt-get clean", &["apt-get", "clean"]);

    std::fs::create_dir_all(in_root("/home/jovyan")).expect("create /home/jovyan");
    let script = in_root(JUPYTER_START_PATH);
    std::fs::create_dir_all(script.parent().expect("the script has a directory"))
        .expect("create /usr/local/bin");
    std::fs::write(&script, JUPYTER_START_SCRIPT).expect("write the start script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the start script");

    // Build-only files and caches. Docker supplies /etc/resolv.conf at run time.
    std::fs::write(in_root("/etc/resolv.conf"), "").expect("empty /etc/resolv.conf");
    remove_path(&in_root(BUILD_CA_IN_ROOT));
    for dir in [
        "/var/lib/apt/lists",
        "/var/cache/apt",
        "/root/.cache",
        "/usr/share/doc",
        "/usr/share/man",
        "/usr/share/info",
    ] {
        remove_path(&in_root(dir));
    }
    for dir in [
        "/var/lib/apt/lists/partial",
        "/var/cache/apt/archives/partial",
    ] {
        std::fs::create_dir_all(in_root(dir)).expect("recreate an apt directory");
    }
    eprintln!(
        "building {JUPYTER_TAG}: root file system ready after {} s; importing",
        started.elapsed().as_secs()
    );
}

/// The mirror for [`DEBIAN_SUITE`] in the machine's apt sources (one-line and deb822
/// formats), or [`DEFAULT_DEBIAN_MIRROR`].
pub(crate) fn debian_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| mirror_in_sources(&text, DEBIAN_SUITE))
        .unwrap_or_else(|| DEFAULT_DEBIAN_MIRROR.to_string())
}

/// The first `deb` source in `text` (one-line or deb822 format) that serves `suite`.
fn mirror_in_sources(text: &str, suite: &str) -> Option<String> {
    // One-line format: `deb [options] URI SUITE COMPONENTS...`.
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let Some(close) = rest.iter().position(|w| w.ends_with(']')) else {
                continue;
            };
            rest.drain(..=close);
        }
        if let [uri, s, ..] = rest[..] {
            if s == suite {
                return Some(uri.to_string());
            }
        }
    }
    // deb822: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let serves = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        if is_deb && serves {
            if let Some(uri) =
                field("URIs").and_then(|u| u.split_whitespace().next().map(str::to_string))
            {
                return Some(uri);
            }
        }
    }
    None
}

/// Runs `args` in `chroot root` with a clean environment plus the build settings.
fn chroot_step(root: &Path, step: &str, args: &[&str]) {
    let mut cmd = Command::new("env");
    cmd.arg("-i").arg(CHROOT_PATH).args([
        "HOME=/root",
        "LANG=C.UTF-8",
        "PIP_NO_CACHE_DIR=1",
        "PIP_DISABLE_PIP_VERSION_CHECK=1",
        "PIP_ROOT_USER_ACTION=ignore",
    ]);
    cmd.arg(format!("PIP_CERT={BUILD_CA_IN_ROOT}"));
    for name in FORWARDED_ENV {
        if let Ok(value) = std::env::var(name) {
            cmd.arg(format!("{name}={value}"));
        }
    }
    cmd.arg("chroot").arg(root).args(args);
    if let Err(e) = run_step(JUPYTER_TAG, step, &mut cmd) {
        panic!("{e}");
    }
}

/// Runs one build step of the image `image_tag`; on failure, a message naming it with
/// its exit status and the end of its output (stdout, then stderr if it is not empty).
pub(crate) fn run_step(image_tag: &str, step: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{image_tag} build step `{step}` could not start: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = tail(&out.stdout);
    if !out.stderr.iter().all(u8::is_ascii_whitespace) {
        text = format!("{text}\n--- stderr ---\n{}", tail(&out.stderr));
    }
    Err(format!(
        "{image_tag} build step `{step}` failed ({}); its output ends:\n{text}",
        out.status
    ))
}

/// The last few kilobytes of `bytes`, as text.
pub(crate) fn tail(bytes: &[u8]) -> String {
    const KEEP: usize = 8000;
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().rev().nth(KEEP) {
        Some((at, _)) => format!("[...]{}", &text[at..]),
        None => text.into_owned(),
    }
}

fn copy_into(from: &str, to: &Path) {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("{JUPYTER_TAG} build: create {}: {e}", dir.display()));
    }
    // The target may be a symlink into the host's view of the root; replace it.
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("{JUPYTER_TAG} build: copy {from} to {}: {e}", to.display()));
}

fn remove_path(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    if let Err(e) = result {
        panic!("{JUPYTER_TAG} build: remove {}: {e}", path.display());
    }
}

/// Unmounts, lazily and innermost first, whatever is mounted below its path when
/// dropped.
#[derive(Debug)]
pub(crate) struct UnmountUnder(pub(crate) PathBuf);

impl Drop for UnmountUnder {
    fn drop(&mut self) {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let prefix = format!("{}/", self.0.display());
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mountinfo)
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = Command::new("umount")
                .args(["-l", &point])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::require::{require, Need};
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
    fn finds_the_mirror_in_apt_sources() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_in_sources(deb822, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "# deb http://old.example/debian bookworm main\ndeb-src http://src.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n";
        assert_eq!(
            mirror_in_sources(one_line, "bookworm").as_deref(),
            Some("http://one.example/debian")
        );
        assert_eq!(mirror_in_sources(one_line, "trixie"), None);
        assert_eq!(
            mirror_in_sources(
                "deb https://deb.nodesource.com/node_20.x nodistro main",
                "bookworm"
            ),
            None
        );
        assert_eq!(unescape_mountinfo("/tmp/a\\040b/proc"), "/tmp/a b/proc");
    }

    #[test]
    fn failed_build_steps_name_themselves_with_their_stderr() {
        let err = run_step(
            "img",
            "the step",
            Command::new("sh").args(["-c", "echo out; echo boom >&2; exit 3"]),
        )
        .unwrap_err();
        assert!(err.contains("img build step `the step` failed"), "{err}");
        assert!(
            err.contains("output ends:\nout\n\n--- stderr ---\nboom"),
            "{err}"
        );
        let err = run_step(
            "img",
            "quiet",
            Command::new("sh").args(["-c", "echo only-out; exit 1"]),
        )
        .unwrap_err();
        assert!(err.contains("output ends:\nonly-out"), "{err}");
        assert!(!err.contains("stderr"), "{err}");
        assert!(run_step("img", "fine", &mut Command::new("true")).is_ok());
        assert_eq!(tail(&vec![b'x'; 9000]).len(), "[...]".len() + 8001);
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
        if !require(&[Need::Docker]) {
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
        if !require(&[Need::Docker]) {
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
