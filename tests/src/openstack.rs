//! A real mini OpenStack for tests, and a harness that plays its hypervisor.
//!
//! [`openstack_image`] builds [`OPENSTACK_TAG`] on first use, without any registry:
//! `debootstrap --variant=minbase bookworm`, Debian 12's OpenStack Zed packages (Keystone,
//! Glance, Placement, a Neutron server without agents, Nova with the fake virt driver,
//! MariaDB, RabbitMQ) installed in the chroot, the files of `tests/openstack/` copied in,
//! and then `start.sh init` run in the chroot, in its own network and pid namespaces:
//! databases, Keystone bootstrap, catalog, flavor [`FLAVOR_ID`], the images
//! [`IMAGE_PLAIN`] and [`IMAGE_AGENT`], host discovery and a smoke test (a server booted and
//! deleted). The services are stopped cleanly and the tree is `docker import`ed, so a
//! container start is a warm start (about 45 s on two cores). The image records a hash of
//! its recipe: a changed recipe under an unchanged tag is refused (bump the tag).
//!
//! [`OpenStack::start`] runs it with `--network host` (Keystone on 127.0.0.1:5000, Nova
//! 8774, Glance 9292, Neutron 9696, Placement 8778; RabbitMQ 17672/17369/17673 and MariaDB
//! on a unix socket, off their default ports) and waits for the line `start.sh` prints
//! once a server create would schedule. The ports are fixed, so one OpenStack runs at a
//! time on the machine: a file lock held for the container's life queues the others.
//!
//! [`Hypervisor`] stands in for the hypervisor Nova's fake driver does not have: it polls
//! the servers API (every [`POLL_INTERVAL`], as admin, all projects) and calls a test's
//! boot callback for each server that turns ACTIVE, dropping what the callback returned
//! when the server is deleted or fails. Polling an external API is the only way in:
//! Nova offers no event stream short of RabbitMQ notifications, and the poll costs one
//! API call.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use base64::alphabet;
use base64::engine::general_purpose::STANDARD as BASE64_STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::docker::container_logs;
use crate::images::{debian_mirror, image_exists, import, run_step, tail, BuildLock};

/// The image's tag; bump it whenever anything in [`RECIPE`] or [`PACKAGES`] changes.
pub const OPENSTACK_TAG: &str = "cairn-test/openstack:zed-1";

/// Keystone's v3 API, the `auth_url` of every client.
pub const AUTH_URL: &str = "http://127.0.0.1:5000/v3";
/// Nova's API (the `compute` endpoint in the catalog).
pub const COMPUTE_URL: &str = "http://127.0.0.1:8774/v2.1";
/// Glance's API (the `image` endpoint in the catalog).
pub const IMAGE_URL: &str = "http://127.0.0.1:9292";
/// The one region.
pub const REGION: &str = "RegionOne";
/// The name of the cloud in [`OpenStack::clouds_yaml`].
pub const CLOUD_NAME: &str = "cairn-test";
/// The flavor made at build time: 1 vCPU, 1024 MiB, 1 GB disk (31 fit on the host).
pub const FLAVOR_ID: &str = "cairn1";
/// [`FLAVOR_ID`]'s name.
pub const FLAVOR_NAME: &str = "m1.cairn";
/// A public Glance image (64 KiB of nothing: the fake driver boots nothing).
pub const IMAGE_PLAIN: &str = "debian-12-plain";
/// Another public Glance image, the one Cairn's agent VMs are meant to boot.
pub const IMAGE_AGENT: &str = "debian-12-cairn-agent";
/// nova-compute's fixed host name, and its hypervisor's.
pub const COMPUTE_HOST: &str = "cairn-compute";

/// The admin user (project `admin`, domain `Default`), for the harness.
pub const ADMIN_USER: &str = "admin";
/// [`ADMIN_USER`]'s password.
pub const ADMIN_PASSWORD: &str = "cairn-admin-secret";
/// The admin project.
pub const ADMIN_PROJECT: &str = "admin";
/// The unprivileged user Cairn works as (role `member` in [`CAIRN_PROJECT`]).
pub const CAIRN_USER: &str = "cairn";
/// [`CAIRN_USER`]'s password.
pub const CAIRN_PASSWORD: &str = "cairn-user-secret";
/// The project Cairn's servers live in.
pub const CAIRN_PROJECT: &str = "cairn";
/// The domain of every user and project.
pub const DOMAIN: &str = "Default";

/// How often [`Hypervisor`] lists the servers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What `start.sh` prints once a server create would schedule.
const READY_LINE: &str = "cairn-openstack: ready";
/// Longest wait from `docker run` to [`READY_LINE`] (a warm start takes ~45 s on an idle
/// two-core machine; CI runs other tests beside it).
const READY_TIMEOUT: Duration = Duration::from_secs(360);
/// Longest wait for another test's OpenStack to go away.
const HOST_LOCK_WAIT: Duration = Duration::from_secs(1800);
/// Every port the container listens on (all on 127.0.0.1).
const PORTS: [u16; 8] = [5000, 9292, 9696, 8778, 8774, 17672, 17369, 17673];
/// The start of every test OpenStack container's name; the pid of its test process follows.
const CONTAINER_PREFIX: &str = "cairn-test-openstack-";
/// Where the start script lives in the image; it is the image's `CMD`.
const START_SCRIPT: &str = "/opt/cairn-openstack/start.sh";
/// The image's environment variable holding [`recipe_hash`].
const RECIPE_ENV: &str = "CAIRN_OPENSTACK_RECIPE";
/// Nova's microversion for reading servers: 2.3 adds `OS-EXT-SRV-ATTR:user_data`.
const READ_MICROVERSION: &str = "2.3";

/// One file of the image's recipe, from `tests/openstack/`.
struct RecipeFile {
    /// Its name in `tests/openstack/`.
    name: &'static str,
    /// Where it goes in the image.
    path: &'static str,
    mode: u32,
    text: &'static str,
}

macro_rules! recipe_file {
    ($name:literal, $path:literal, $mode:literal) => {
        RecipeFile {
            name: $name,
            path: $path,
            mode: $mode,
            text: include_str!(concat!("../openstack/", $name)),
        }
    };
}

/// Every file of `tests/openstack/` and where it goes.
const RECIPE: &[RecipeFile] = &[
    recipe_file!("start.sh", "/opt/cairn-openstack/start.sh", 0o755),
    recipe_file!("setup.py", "/opt/cairn-openstack/setup.py", 0o755),
    recipe_file!(
        "credentials.env",
        "/opt/cairn-openstack/credentials.env",
        0o644
    ),
    recipe_file!("nova-compute", "/usr/local/bin/nova-compute", 0o755),
    recipe_file!(
        "mariadb.cnf",
        "/etc/mysql/mariadb.conf.d/99-cairn.cnf",
        0o644
    ),
    recipe_file!(
        "rabbitmq-env.conf",
        "/etc/rabbitmq/rabbitmq-env.conf",
        0o644
    ),
    recipe_file!("rabbitmq.conf", "/etc/rabbitmq/rabbitmq.conf", 0o644),
    recipe_file!("keystone.conf", "/etc/keystone/keystone.conf", 0o644),
    recipe_file!("glance-api.conf", "/etc/glance/glance-api.conf", 0o644),
    recipe_file!("placement.conf", "/etc/placement/placement.conf", 0o644),
    recipe_file!("neutron.conf", "/etc/neutron/neutron.conf", 0o644),
    recipe_file!(
        "ml2_conf.ini",
        "/etc/neutron/plugins/ml2/ml2_conf.ini",
        0o644
    ),
    recipe_file!("nova.conf", "/etc/nova/nova.conf", 0o644),
];

/// Debian packages installed in the image (with `--no-install-recommends`). The Debian
/// `nova-compute` package is not among them: it depends on a real hypervisor (libvirt and
/// qemu); `tests/openstack/nova-compute` runs it from `python3-nova` with the fake driver.
const PACKAGES: &[&str] = &[
    "mariadb-server",
    "rabbitmq-server",
    "keystone",
    "glance-api",
    "placement-api",
    "neutron-server",
    "nova-api",
    "nova-conductor",
    "nova-scheduler",
    // `ip` to bring up loopback in the build's network namespace, `ss` and `ps` to debug.
    "iproute2",
    "procps",
];

/// Directories the services expect and no package makes.
const DIRECTORIES: &[&str] = &[
    "/var/lib/glance/images",
    "/var/lib/glance/staging",
    "/var/lib/glance/tasks",
    "/var/lib/neutron/tmp",
    "/var/lib/nova/instances",
    "/var/lib/nova/tmp",
    "/run/mysqld",
    "/dev/shm",
];

/// The Debian release (its OpenStack is Zed).
const SUITE: &str = "bookworm";

/// A clean environment for commands in the chroot.
const CHROOT_ENV: &[&str] = &[
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "DEBIAN_FRONTEND=noninteractive",
];

/// Free memory wanted before building in `/dev/shm` (the tree is ~2.1 GB there).
const SHM_WANTED: u64 = 6 << 30;

/// A hash of everything that goes into the image, stored in it as [`RECIPE_ENV`].
fn recipe_hash() -> String {
    let mut h = blake3::Hasher::new();
    for f in RECIPE {
        h.update(f.name.as_bytes());
        h.update(f.path.as_bytes());
        h.update(&f.mode.to_le_bytes());
        h.update(&(f.text.len() as u64).to_le_bytes());
        h.update(f.text.as_bytes());
    }
    for p in PACKAGES {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    h.update(SUITE.as_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// The OpenStack test image, [`OPENSTACK_TAG`], built on first use (about 5 minutes on
/// two cores: debootstrap, apt, then the initialisation). Panics naming the build step
/// that failed, or if the image under this tag was built from another recipe.
pub fn openstack_image() -> String {
    let hash = recipe_hash();
    if !image_exists(OPENSTACK_TAG) {
        let _lock = BuildLock::acquire(OPENSTACK_TAG);
        if !image_exists(OPENSTACK_TAG) {
            build_image(&hash);
        }
    }
    let env = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{range .Config.Env}}{{println .}}{{end}}",
            OPENSTACK_TAG,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("docker image inspect {OPENSTACK_TAG}: {e}"));
    let built_from = String::from_utf8_lossy(&env.stdout).lines().find_map(|l| {
        l.strip_prefix(&format!("{RECIPE_ENV}="))
            .map(str::to_string)
    });
    assert_eq!(
        built_from.as_deref(),
        Some(hash.as_str()),
        "the image {OPENSTACK_TAG} was built from another recipe than tests/openstack/ and \
         src/openstack.rs now hold: bump OPENSTACK_TAG (or `docker rmi {OPENSTACK_TAG}`)"
    );
    OPENSTACK_TAG.to_string()
}

/// A directory to build the root file system in, removed when dropped: in `/dev/shm`
/// when it is a tmpfs with room (dpkg and MariaDB sync a lot; on tmpfs that is free, and
/// the build takes half the time), else in the temporary directory.
struct BuildDir(PathBuf);

impl BuildDir {
    fn new() -> Self {
        let shm = Path::new("/dev/shm");
        let base = if is_roomy_tmpfs(shm) {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        // Left by a killed build (this process holds the build lock, so no build runs).
        if let Ok(dir) = std::fs::read_dir(&base) {
            for e in dir.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("cairn-openstack-build-")
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let path = base.join(format!("cairn-openstack-build-{}", std::process::id()));
        std::fs::create_dir_all(path.join("root"))
            .unwrap_or_else(|e| panic!("create the build directory {}: {e}", path.display()));
        BuildDir(path)
    }

    fn root(&self) -> PathBuf {
        self.0.join("root")
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `dir` is a tmpfs with room for the build, and the machine has the memory.
fn is_roomy_tmpfs(dir: &Path) -> bool {
    let Ok(out) = Command::new("df")
        .args(["-B1", "--output=fstype,avail"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().nth(1) else {
        return false;
    };
    let mut words = line.split_whitespace();
    let tmpfs = words.next() == Some("tmpfs");
    let room = words
        .next()
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(0);
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let kb = l.strip_prefix("MemAvailable:")?.trim().strip_suffix("kB")?;
                kb.trim().parse::<u64>().ok()
            })
        })
        .unwrap_or(0)
        * 1024;
    tmpfs && room >= SHM_WANTED && available >= SHM_WANTED
}

/// Builds the root file system and imports it as [`OPENSTACK_TAG`].
fn build_image(hash: &str) {
    let started = Instant::now();
    let dir = BuildDir::new();
    let root = dir.root();
    openstack_rootfs(&root, started);
    eprintln!(
        "building {OPENSTACK_TAG}: root file system ready after {} s; importing",
        started.elapsed().as_secs()
    );
    let changes = [
        format!(
            "CMD {}",
            serde_json::to_string(&[START_SCRIPT]).expect("a list of strings is JSON")
        ),
        format!("ENV {RECIPE_ENV}={hash}"),
    ];
    import(&root, OPENSTACK_TAG, &changes);
    eprintln!(
        "building {OPENSTACK_TAG}: done in {} s",
        started.elapsed().as_secs()
    );
}

/// Fills `root`: Debian [`SUITE`] with [`PACKAGES`], the [`RECIPE`] files, then
/// `start.sh init`. Needs root, `debootstrap` and `unshare`. Every step runs in its own
/// mount namespace (and the initialisation in its own network and pid namespaces too), so
/// nothing it mounts or starts outlives it, and the services bind nothing of the host's.
fn openstack_rootfs(root: &Path, started: Instant) {
    let progress = |what: &str| {
        eprintln!(
            "building {OPENSTACK_TAG}: {what} ({} s)",
            started.elapsed().as_secs()
        )
    };
    let in_root = |p: &str| root.join(p.trim_start_matches('/'));
    let mirror = debian_mirror();

    progress(&format!("debootstrap {SUITE} from {mirror}"));
    let mut debootstrap = Command::new("unshare");
    debootstrap
        .args(["--mount", "--propagation", "private", "--"])
        .args(["debootstrap", "--variant=minbase", SUITE])
        .arg(root)
        .arg(&mirror);
    if let Err(e) = run_step(OPENSTACK_TAG, "debootstrap", &mut debootstrap) {
        let log = std::fs::read(in_root("/debootstrap/debootstrap.log"))
            .map(|l| format!("\n--- debootstrap/debootstrap.log (end) ---\n{}", tail(&l)))
            .unwrap_or_default();
        panic!("{e}{log}\n(are debootstrap and unshare installed? apt-get install debootstrap util-linux)");
    }

    // apt in the chroot: the host's resolver and its fetch settings (proxies,
    // Check-Valid-Until for snapshot mirrors), no recommends, and no daemons started by
    // maintainer scripts (there is no init; the services start in start.sh).
    copy_file(Path::new("/etc/resolv.conf"), &in_root("/etc/resolv.conf"));
    if let Ok(dir) = std::fs::read_dir("/etc/apt/apt.conf.d") {
        for e in dir.flatten() {
            let acquire = std::fs::read_to_string(e.path())
                .is_ok_and(|t| t.lines().any(|l| l.trim_start().starts_with("Acquire")));
            if acquire {
                copy_file(
                    &e.path(),
                    &in_root("/etc/apt/apt.conf.d").join(e.file_name()),
                );
            }
        }
    }
    write_file(
        &in_root("/etc/apt/apt.conf.d/90cairn-no-recommends"),
        "APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\n",
        0o644,
    );
    write_file(
        &in_root("/usr/sbin/policy-rc.d"),
        "#!/bin/sh\n# No daemon starts from a package's scripts: start.sh starts them.\nexit 101\n",
        0o755,
    );

    progress(&format!("apt-get install {} packages", PACKAGES.len()));
    // All of openstack-pkg-tools' debconf questions (configure_db, register-endpoint,
    // create-admin-tenant, ...) default to false: noninteractive needs no preseeding,
    // and start.sh does the databases and the catalog itself.
    let install = format!(
        "apt-get update -q && apt-get install -y -q --no-install-recommends {} && apt-get clean",
        PACKAGES.join(" ")
    );
    in_namespaces(
        root,
        "apt-get install",
        &["--mount"],
        &format!("{}sh -c '{install}'", chroot_prefix()),
    );

    for f in RECIPE {
        write_file(&in_root(f.path), f.text, f.mode);
    }
    for d in DIRECTORIES {
        std::fs::create_dir_all(in_root(d))
            .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: create {d}: {e}"));
    }
    // RabbitMQ's node is rabbit@localhost; minbase has no /etc/hosts. (Docker supplies its
    // own at run time.)
    write_file(
        &in_root("/etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    );

    progress("initialising: databases, catalog, images, smoke test (start.sh init)");
    in_namespaces(
        root,
        "start.sh init",
        &["--mount", "--net", "--pid", "--fork", "--kill-child"],
        &format!(
            "chroot \"$1\" ip link set lo up && {}{START_SCRIPT} init",
            chroot_prefix()
        ),
    );

    progress("removing caches and documentation");
    for dir in [
        "/var/lib/apt/lists",
        "/var/cache/apt",
        "/usr/share/doc",
        "/usr/share/man",
        "/usr/share/info",
        "/usr/share/locale",
        "/root/.cache",
        "/tmp",
    ] {
        let path = in_root(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: remove {dir}: {e}"));
        }
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: recreate {dir}: {e}"));
    }
    for dir in [
        "/var/lib/apt/lists/partial",
        "/var/cache/apt/archives/partial",
    ] {
        std::fs::create_dir_all(in_root(dir))
            .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: recreate {dir}: {e}"));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(in_root("/tmp"), std::fs::Permissions::from_mode(0o1777))
        .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: chmod /tmp: {e}"));
    // Docker supplies /etc/resolv.conf at run time.
    write_file(&in_root("/etc/resolv.conf"), "", 0o644);
}

/// `env -i CLEAN_ENV... chroot "$1" `, the start of a command run in the chroot by
/// [`in_namespaces`].
fn chroot_prefix() -> String {
    format!("env -i {} chroot \"$1\" ", CHROOT_ENV.join(" "))
}

/// Runs the shell command `script` (which finds the root in `$1`) under `unshare` with
/// the given namespace options, with `/proc` and `/dev/shm` of the root mounted for it.
/// Panics naming `step`.
fn in_namespaces(root: &Path, step: &str, unshare: &[&str], script: &str) {
    let mut cmd = Command::new("unshare");
    cmd.args(unshare)
        .args(["--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "set -e; mount -t proc proc \"$1/proc\"; mount -t tmpfs shm \"$1/dev/shm\"; {script}"
        ))
        .arg("sh")
        .arg(root);
    if let Err(e) = run_step(OPENSTACK_TAG, step, &mut cmd) {
        panic!("{e}");
    }
}

fn write_file(path: &Path, text: &str, mode: u32) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: create {}: {e}", dir.display()));
    }
    // The target may be a symlink (resolv.conf); replace it.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text)
        .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: write {}: {e}", path.display()));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: chmod {}: {e}", path.display()));
}

fn copy_file(from: &Path, to: &Path) {
    let text = std::fs::read(from)
        .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: read {}: {e}", from.display()));
    let _ = std::fs::remove_file(to);
    std::fs::write(to, text)
        .unwrap_or_else(|e| panic!("{OPENSTACK_TAG} build: write {}: {e}", to.display()));
}

/// Holds the machine's one OpenStack slot while it lives: an exclusive `flock` on a file
/// under the temporary directory, released by the kernel even if the process is killed.
struct HostLock {
    _file: File,
}

impl HostLock {
    async fn acquire() -> anyhow::Result<HostLock> {
        let path = std::env::temp_dir().join("cairn-test-openstack.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("lock {}", path.display()))
                }
            }
            if start.elapsed() > HOST_LOCK_WAIT {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "waited {} s for the test OpenStack held by process {} ({}): only one \
                     can run on a machine (fixed ports)",
                    HOST_LOCK_WAIT.as_secs(),
                    owner.trim(),
                    path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = file.set_len(0);
        let _ = std::fs::write(&path, std::process::id().to_string());
        Ok(HostLock { _file: file })
    }
}

/// A server as an admin sees it (microversion 2.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub id: String,
    pub name: String,
    /// `BUILD`, `ACTIVE`, `ERROR`, `DELETED`, ...
    pub status: String,
    /// `OS-EXT-STS:task_state`: `deleting` once a delete has begun.
    pub task_state: Option<String>,
    pub project_id: String,
    pub user_id: String,
    /// Empty for a server booted from a volume.
    pub image_id: String,
    /// The image's name in Glance; empty if there is no such image (any more).
    pub image_name: String,
    pub flavor_id: Option<String>,
    /// `OS-EXT-SRV-ATTR:user_data`, base64-decoded, as text (invalid UTF-8 replaced:
    /// see `user_data_raw` for gzipped user data).
    pub user_data: Option<String>,
    /// `OS-EXT-SRV-ATTR:user_data`, base64-decoded.
    pub user_data_raw: Option<Vec<u8>>,
    pub metadata: BTreeMap<String, String>,
    /// `OS-EXT-SRV-ATTR:host`: [`COMPUTE_HOST`] once scheduled.
    pub host: Option<String>,
    /// Nova's `created` (whole seconds).
    pub created: Option<SystemTime>,
    /// `OS-SRV-USG:launched_at`: when Nova's fake driver "booted" it.
    pub launched_at: Option<SystemTime>,
    /// The fault's message of a server in `ERROR`.
    pub fault: Option<String>,
}

impl Server {
    /// From one entry of Nova's `servers` (or its `server`); `image_name` is left empty.
    fn from_json(v: &Value) -> anyhow::Result<Server> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let id = text("id").ok_or_else(|| anyhow!("a server without an id: {v}"))?;
        let user_data_raw = match v.get("OS-EXT-SRV-ATTR:user_data").and_then(Value::as_str) {
            None => None,
            Some(b64) => Some(
                decode_user_data(b64)
                    .ok_or_else(|| anyhow!("server {id}: user_data is not base64: {b64:?}"))?,
            ),
        };
        let metadata = v
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let time = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
        };
        Ok(Server {
            name: text("name").unwrap_or_default(),
            status: text("status").unwrap_or_default(),
            task_state: text("OS-EXT-STS:task_state"),
            project_id: text("tenant_id").unwrap_or_default(),
            user_id: text("user_id").unwrap_or_default(),
            // "" (not an object) for a server booted from a volume.
            image_id: v
                .get("image")
                .and_then(|i| i.get("id"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            image_name: String::new(),
            flavor_id: v
                .get("flavor")
                .and_then(|f| f.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string),
            user_data: user_data_raw
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            user_data_raw,
            metadata,
            host: text("OS-EXT-SRV-ATTR:host"),
            created: time("created"),
            launched_at: time("OS-SRV-USG:launched_at"),
            fault: v
                .get("fault")
                .and_then(|f| f.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string),
            id,
        })
    }

    /// Whether a hypervisor should be running it: ACTIVE and not being deleted.
    pub fn wants_vm(&self) -> bool {
        self.status == "ACTIVE" && self.task_state.as_deref() != Some("deleting")
    }
}

/// Memory of the container's processes, from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub processes: usize,
    /// Sum of every process's resident set (shared pages counted once per process).
    pub rss_bytes: u64,
    /// Sum of every process's proportional set size (shared pages split): the real cost.
    pub pss_bytes: u64,
}

/// The HTTP side, shared by [`OpenStack`] and its [`Hypervisor`]s.
struct Api {
    http: reqwest::Client,
    /// The admin token and when it was issued (Keystone's tokens live an hour).
    admin_token: tokio::sync::Mutex<Option<(String, Instant)>>,
    /// Glance image id to name.
    image_names: tokio::sync::Mutex<HashMap<String, String>>,
}

/// How long an admin token is reused (Keystone's default expiry is an hour).
const TOKEN_REUSE: Duration = Duration::from_secs(30 * 60);

impl Api {
    async fn token(&self, user: &str, password: &str, project: &str) -> anyhow::Result<String> {
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"name": DOMAIN}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": DOMAIN}}},
        }});
        let resp = self
            .http
            .post(format!("{AUTH_URL}/auth/tokens"))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {AUTH_URL}/auth/tokens"))?;
        let status = resp.status();
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|t| t.to_str().ok())
            .map(str::to_string);
        match token {
            Some(t) if status.is_success() => Ok(t),
            _ => bail!(
                "Keystone refused a token for {user} in {project}: {status}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }

    async fn admin_token(&self) -> anyhow::Result<String> {
        let mut cached = self.admin_token.lock().await;
        if let Some((t, at)) = cached.as_ref() {
            if at.elapsed() < TOKEN_REUSE {
                return Ok(t.clone());
            }
        }
        let t = self
            .token(ADMIN_USER, ADMIN_PASSWORD, ADMIN_PROJECT)
            .await?;
        *cached = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    /// GET `url` as admin; `None` on 404.
    async fn get(&self, url: &str, microversion: Option<&str>) -> anyhow::Result<Option<Value>> {
        let token = self.admin_token().await?;
        let mut req = self.http.get(url).header("X-Auth-Token", token);
        if let Some(v) = microversion {
            req = req.header("OpenStack-API-Version", format!("compute {v}"));
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let text = resp.text().await.with_context(|| format!("GET {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {text}");
        }
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("GET {url}: not JSON: {text}"))
    }

    async fn servers(&self) -> anyhow::Result<Vec<Server>> {
        let url = format!("{COMPUTE_URL}/servers/detail?all_tenants=1");
        let body = self
            .get(&url, Some(READ_MICROVERSION))
            .await?
            .ok_or_else(|| anyhow!("GET {url}: 404"))?;
        let list = body
            .get("servers")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("GET {url}: no `servers` in {body}"))?;
        let mut servers = list
            .iter()
            .map(Server::from_json)
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.name_images(&mut servers).await?;
        Ok(servers)
    }

    async fn server(&self, id: &str) -> anyhow::Result<Option<Server>> {
        let url = format!("{COMPUTE_URL}/servers/{id}");
        let Some(body) = self.get(&url, Some(READ_MICROVERSION)).await? else {
            return Ok(None);
        };
        let v = body
            .get("server")
            .ok_or_else(|| anyhow!("GET {url}: no `server` in {body}"))?;
        let mut servers = vec![Server::from_json(v)?];
        self.name_images(&mut servers).await?;
        Ok(servers.pop())
    }

    /// Fills in `image_name`, asking Glance for the names it does not know yet.
    async fn name_images(&self, servers: &mut [Server]) -> anyhow::Result<()> {
        let mut names = self.image_names.lock().await;
        if servers
            .iter()
            .any(|s| !s.image_id.is_empty() && !names.contains_key(&s.image_id))
        {
            *names = self.images().await?;
        }
        for s in servers {
            s.image_name = names.get(&s.image_id).cloned().unwrap_or_default();
        }
        Ok(())
    }

    /// Every image's id and name.
    async fn images(&self) -> anyhow::Result<HashMap<String, String>> {
        let url = format!("{IMAGE_URL}/v2/images?limit=1000");
        let body = self
            .get(&url, None)
            .await?
            .ok_or_else(|| anyhow!("GET {url}: 404"))?;
        Ok(body
            .get("images")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("GET {url}: no `images` in {body}"))?
            .iter()
            .filter_map(|i| {
                Some((
                    i.get("id")?.as_str()?.to_string(),
                    i.get("name")?.as_str()?.to_string(),
                ))
            })
            .collect())
    }
}

/// A running test OpenStack; the container is removed, and the machine's slot freed,
/// when it is dropped.
pub struct OpenStack {
    /// Keystone v3, [`AUTH_URL`].
    pub auth_url: String,
    pub region: String,
    /// The unprivileged user Cairn works as, its password, project and domain.
    pub user: String,
    pub password: String,
    pub project: String,
    pub domain: String,
    /// The admin the harness works as.
    pub admin_user: String,
    pub admin_password: String,
    pub admin_project: String,
    /// The flavor for servers: its name, [`FLAVOR_NAME`] (the id is [`FLAVOR_ID`]).
    pub flavor: String,
    pub flavor_id: String,
    /// The container's name.
    pub container: String,
    /// From `docker run` to ready.
    pub ready_after: Duration,
    api: Arc<Api>,
    _lock: HostLock,
}

impl std::fmt::Debug for OpenStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStack")
            .field("auth_url", &self.auth_url)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

impl OpenStack {
    /// Builds the image if needed, waits for the machine's OpenStack slot, removes a
    /// container a killed earlier run left, starts the container and waits (at most
    /// [`READY_TIMEOUT`]) for `start.sh`'s ready line. Fails with the end of the
    /// container's log if it stops or is not ready in time.
    pub async fn start() -> anyhow::Result<OpenStack> {
        match tokio::task::spawn_blocking(openstack_image).await {
            Ok(_) => {}
            // The build names its failing step in its panic: keep it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(e).context("build the OpenStack image"),
        }
        let lock = HostLock::acquire().await?;
        remove_stale_containers()?;
        for port in PORTS {
            std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
                format!(
                    "port {port} on 127.0.0.1 is taken by another program; the test \
                     OpenStack needs {PORTS:?}"
                )
            })?;
        }
        let container = format!("{CONTAINER_PREFIX}{}", std::process::id());
        let started = Instant::now();
        let out = Command::new("docker")
            .args(["run", "-d", "--name", &container, "--network", "host"])
            .args(["--label", "cairn-test-openstack=1", OPENSTACK_TAG])
            .stdin(Stdio::null())
            .output()
            .context("run docker")?;
        if !out.status.success() {
            let _ = docker_quiet(&["rm", "-f", &container]);
            bail!(
                "docker run {OPENSTACK_TAG}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // From here on, dropping `os` removes the container.
        let mut os = OpenStack {
            auth_url: AUTH_URL.into(),
            region: REGION.into(),
            user: CAIRN_USER.into(),
            password: CAIRN_PASSWORD.into(),
            project: CAIRN_PROJECT.into(),
            domain: DOMAIN.into(),
            admin_user: ADMIN_USER.into(),
            admin_password: ADMIN_PASSWORD.into(),
            admin_project: ADMIN_PROJECT.into(),
            flavor: FLAVOR_NAME.into(),
            flavor_id: FLAVOR_ID.into(),
            container,
            ready_after: Duration::ZERO,
            api: Arc::new(Api {
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .context("build an HTTP client")?,
                admin_token: tokio::sync::Mutex::new(None),
                image_names: tokio::sync::Mutex::new(HashMap::new()),
            }),
            _lock: lock,
        };
        os.wait_ready().await?;
        os.ready_after = started.elapsed();
        Ok(os)
    }

    /// Follows the container's log until [`READY_LINE`]: no polling, the line is the event.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let mut logs = tokio::process::Command::new("docker")
            .args(["logs", "--follow", &self.container])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("run docker logs")?;
        let stdout = logs
            .stdout
            .take()
            .ok_or_else(|| anyhow!("docker logs has no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with(READY_LINE) {
                    return Ok(true);
                }
            }
            Ok::<_, std::io::Error>(false)
        })
        .await;
        let _ = logs.start_kill();
        match ready {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => bail!(
                "the test OpenStack stopped before it was ready ({}); its log ends:\n{}",
                docker_quiet(&["inspect", "--format", "exit code {{.State.ExitCode}}", &self.container])
                    .unwrap_or_default(),
                self.log_tail()
            ),
            Ok(Err(e)) => Err(e).context("read the test OpenStack's log"),
            Err(_) => bail!(
                "the test OpenStack was not ready after {} s; its log ends:\n{}\n--- service logs ---\n{}",
                READY_TIMEOUT.as_secs(),
                self.log_tail(),
                docker_quiet(&[
                    "exec",
                    &self.container,
                    "sh",
                    "-c",
                    "tail -n 15 /var/log/cairn/*.log /var/log/nova/*.log /var/log/neutron/*.log",
                ])
                .unwrap_or_default()
            ),
        }
    }

    /// The last lines of the container's log (stdout and stderr).
    pub fn log_tail(&self) -> String {
        container_logs(&self.container, 80)
    }

    /// A `clouds.yaml` with one cloud, [`CLOUD_NAME`], as the unprivileged user: the
    /// format openstacksdk, the `openstack` CLI and gophercloud read.
    pub fn clouds_yaml(&self) -> String {
        clouds_yaml_text(
            &[
                ("auth_url", &self.auth_url),
                ("username", &self.user),
                ("password", &self.password),
                ("project_name", &self.project),
                ("user_domain_name", &self.domain),
                ("project_domain_name", &self.domain),
            ],
            &self.region,
        )
    }

    /// A token of the admin (project-scoped to `admin`), reused for half an hour.
    pub async fn admin_token(&self) -> anyhow::Result<String> {
        self.api.admin_token().await
    }

    /// A fresh token of the unprivileged user, scoped to its project.
    pub async fn user_token(&self) -> anyhow::Result<String> {
        self.api
            .token(&self.user, &self.password, &self.project)
            .await
    }

    /// Every server of every project, as the admin sees it.
    pub async fn servers(&self) -> anyhow::Result<Vec<Server>> {
        self.api.servers().await
    }

    /// One server, or `None` if Nova does not know it (404).
    pub async fn server(&self, id: &str) -> anyhow::Result<Option<Server>> {
        self.api.server(id).await
    }

    /// The id of the Glance image called `name`.
    pub async fn image_id(&self, name: &str) -> anyhow::Result<String> {
        let images = self.api.images().await?;
        let mut ids: Vec<&String> = images
            .iter()
            .filter(|(_, n)| n.as_str() == name)
            .map(|(id, _)| id)
            .collect();
        match ids.len() {
            1 => Ok(ids.remove(0).clone()),
            0 => bail!("Glance has no image called {name:?}"),
            n => bail!("Glance has {n} images called {name:?}"),
        }
    }

    /// Memory of every process in the container (processes sharing its init's mount
    /// namespace), from /proc.
    pub fn memory(&self) -> anyhow::Result<MemoryUse> {
        let pid = docker_quiet(&["inspect", "--format", "{{.State.Pid}}", &self.container])
            .context("find the container's init")?;
        let ns = std::fs::read_link(format!("/proc/{}/ns/mnt", pid.trim()))
            .with_context(|| format!("the mount namespace of pid {}", pid.trim()))?;
        let mut total = MemoryUse {
            processes: 0,
            rss_bytes: 0,
            pss_bytes: 0,
        };
        for e in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
            let p = e.path();
            if !e
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            if std::fs::read_link(p.join("ns/mnt")).ok().as_ref() != Some(&ns) {
                continue;
            }
            let field = |file: &str, name: &str| -> u64 {
                std::fs::read_to_string(p.join(file))
                    .ok()
                    .and_then(|t| {
                        t.lines().find_map(|l| {
                            l.strip_prefix(name)?
                                .trim()
                                .strip_suffix("kB")?
                                .trim()
                                .parse::<u64>()
                                .ok()
                        })
                    })
                    .unwrap_or(0)
                    * 1024
            };
            total.processes += 1;
            total.rss_bytes += field("status", "VmRSS:");
            total.pss_bytes += field("smaps_rollup", "Pss:");
        }
        Ok(total)
    }
}

impl Drop for OpenStack {
    fn drop(&mut self) {
        // Before the lock (a field) is released.
        let _ = docker_quiet(&["rm", "-f", &self.container]);
    }
}

/// Removes every test OpenStack container: the caller holds the machine's slot, so any
/// such container was left by a run that was killed.
fn remove_stale_containers() -> anyhow::Result<()> {
    let names = docker_quiet(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={CONTAINER_PREFIX}"),
        "--format",
        "{{.Names}}",
    ])?;
    for name in names
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(CONTAINER_PREFIX))
    {
        docker_quiet(&["rm", "-f", name])
            .with_context(|| format!("remove the stale test OpenStack {name}"))?;
    }
    Ok(())
}

/// Runs `docker ARGS`; its stdout, or an error with its stderr.
fn docker_quiet(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run docker {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A `clouds.yaml` with the cloud [`CLOUD_NAME`]: `auth` holds `auth`'s pairs.
fn clouds_yaml_text(auth: &[(&str, &str)], region: &str) -> String {
    let mut text = format!("clouds:\n  {CLOUD_NAME}:\n    auth:\n");
    for (k, v) in auth {
        text += &format!("      {k}: {}\n", yaml_str(v));
    }
    text += &format!(
        "    region_name: {}\n    interface: public\n    identity_api_version: 3\n",
        yaml_str(region)
    );
    text
}

/// `s` as a double-quoted YAML scalar.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string is JSON")
}

/// What a test's boot callback returns: anything, dropped when the server goes away.
pub type VmHandle = Box<dyn Any + Send>;

/// A test's boot callback: given a server that just turned ACTIVE, boot its VM.
pub type BootFn = Box<dyn Fn(&Server) -> anyhow::Result<VmHandle> + Send + Sync>;

/// When a server's VM came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimes {
    /// Nova's `created` (whole seconds).
    pub created: Option<SystemTime>,
    /// Nova's `launched_at`, when the fake driver finished "spawning".
    pub launched_at: Option<SystemTime>,
    /// The first poll that saw it ACTIVE.
    pub active_seen: SystemTime,
    /// When the boot callback returned.
    pub booted: SystemTime,
    /// How long the boot callback took.
    pub boot_took: Duration,
}

/// A booted VM's handle; shared so [`Hypervisor::with_vm`] can use it without holding
/// the state's lock (the handle is dropped when its last holder lets go).
type SharedVm = Arc<StdMutex<VmHandle>>;

#[derive(Default)]
struct HvState {
    vms: HashMap<String, SharedVm>,
    booting: HashSet<String>,
    /// Servers whose VM left `vms` but whose handle is still being dropped.
    dropping: HashSet<String>,
    times: HashMap<String, BootTimes>,
    failed: HashMap<String, String>,
    last_error: Option<String>,
    polls: u64,
    stopped: bool,
}

struct HvShared {
    state: StdMutex<HvState>,
    /// Bumped on every change, for the `wait_*` methods.
    changed: tokio::sync::watch::Sender<u64>,
}

impl HvShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HvState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Plays the hypervisor for the test OpenStack: a background task lists the servers
/// every [`POLL_INTERVAL`] and calls the boot callback (on a blocking thread) for each
/// server that is ACTIVE and has no VM yet; what the callback returned is dropped when
/// the server disappears, errs, or starts being deleted. A callback's error is recorded
/// in [`Hypervisor::failures`] and not retried. Dropping the hypervisor stops the task and
/// drops every handle.
pub struct Hypervisor {
    shared: Arc<HvShared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("booted", &self.booted())
            .finish_non_exhaustive()
    }
}

impl Hypervisor {
    /// Starts watching `openstack`'s servers. Must be called within a tokio runtime.
    pub fn start(openstack: &OpenStack, boot: BootFn) -> Hypervisor {
        let shared = Arc::new(HvShared {
            state: StdMutex::new(HvState::default()),
            changed: tokio::sync::watch::channel(0).0,
        });
        let task = tokio::spawn(poll_loop(
            openstack.api.clone(),
            shared.clone(),
            Arc::new(boot),
        ));
        Hypervisor { shared, task }
    }

    /// The ids of the servers that have a VM now, sorted.
    pub fn booted(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.shared.lock().vms.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Boot times of every server booted so far (kept after the server is gone).
    pub fn timings(&self) -> HashMap<String, BootTimes> {
        self.shared.lock().times.clone()
    }

    /// Calls `f` with server `id`'s VM handle, which must be a `T`. The handle stays
    /// alive while `f` runs even if the server goes meanwhile; polling goes on.
    pub fn with_vm<T: Any, R>(
        &self,
        id: &str,
        f: impl FnOnce(&T) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let vm = self
            .shared
            .lock()
            .vms
            .get(id)
            .cloned()
            .ok_or_else(|| anyhow!("server {id} has no VM"))?;
        let handle = vm.lock().unwrap_or_else(|p| p.into_inner());
        let t = handle.as_ref().downcast_ref::<T>().ok_or_else(|| {
            anyhow!(
                "server {id}'s VM handle is not a {}",
                std::any::type_name::<T>()
            )
        })?;
        f(t)
    }

    /// Servers whose boot callback failed, with the error.
    pub fn failures(&self) -> HashMap<String, String> {
        self.shared.lock().failed.clone()
    }

    /// The last failed poll's error, if the last poll failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }

    /// How many polls have completed.
    pub fn polls(&self) -> u64 {
        self.shared.lock().polls
    }

    /// Waits until server `id` has a VM; its boot times.
    pub async fn wait_booted(&self, id: &str, timeout: Duration) -> anyhow::Result<BootTimes> {
        self.wait(timeout, &format!("server {id} to boot"), |s| {
            if let Some(e) = s.failed.get(id) {
                return Some(Err(anyhow!("booting server {id} failed: {e}")));
            }
            s.vms.contains_key(id).then(|| {
                s.times
                    .get(id)
                    .copied()
                    .ok_or_else(|| anyhow!("no boot times for {id}"))
            })
        })
        .await
    }

    /// Waits until server `id` has no VM (its handle was dropped) and none is booting.
    pub async fn wait_gone(&self, id: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait(timeout, &format!("server {id}'s VM to go"), |s| {
            (!s.vms.contains_key(id) && !s.booting.contains(id) && !s.dropping.contains(id))
                .then_some(Ok(()))
        })
        .await
    }

    async fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&HvState) -> Option<anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(r) = done(&self.shared.lock()) {
                return r;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the hypervisor stopped while waiting for {what}"),
                Err(_) => bail!(
                    "waited {} s for {what} (last poll error: {})",
                    timeout.as_secs(),
                    self.last_error().unwrap_or_else(|| "none".into())
                ),
            }
        }
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.task.abort();
        let handles: Vec<SharedVm> = {
            let mut s = self.shared.lock();
            s.stopped = true;
            s.vms.drain().map(|(_, h)| h).collect()
        };
        // Boots still running drop their handles themselves when they see `stopped`.
        drop(handles);
    }
}

async fn poll_loop(api: Arc<Api>, shared: Arc<HvShared>, boot: Arc<BootFn>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let servers = match api.servers().await {
            Ok(s) => s,
            Err(e) => {
                shared.lock().last_error = Some(format!("{e:#}"));
                shared.notify();
                continue;
            }
        };
        let wanted: HashMap<&str, &Server> = servers
            .iter()
            .filter(|s| s.wants_vm())
            .map(|s| (s.id.as_str(), s))
            .collect();
        let (gone_ids, gone, to_boot) = {
            let mut s = shared.lock();
            s.last_error = None;
            s.polls += 1;
            let gone_ids: Vec<String> = s
                .vms
                .keys()
                .filter(|id| !wanted.contains_key(id.as_str()))
                .cloned()
                .collect();
            let gone: Vec<SharedVm> = gone_ids.iter().filter_map(|id| s.vms.remove(id)).collect();
            s.dropping.extend(gone_ids.iter().cloned());
            let to_boot: Vec<Server> = wanted
                .values()
                .filter(|v| {
                    !s.vms.contains_key(&v.id)
                        && !s.booting.contains(&v.id)
                        && !s.failed.contains_key(&v.id)
                })
                .map(|v| (*v).clone())
                .collect();
            for v in &to_boot {
                s.booting.insert(v.id.clone());
            }
            (gone_ids, gone, to_boot)
        };
        if !gone.is_empty() {
            // Dropping may be slow (a VM's container is removed): off the runtime's threads.
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                drop(gone);
                // Only now is the VM really gone: `wait_gone` waits for this.
                let mut s = shared.lock();
                for id in &gone_ids {
                    s.dropping.remove(id);
                }
                drop(s);
                shared.notify();
            });
        }
        for server in to_boot {
            let (shared, boot) = (shared.clone(), boot.clone());
            let active_seen = SystemTime::now();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let result = boot(&server);
                let booted = SystemTime::now();
                let mut late = None;
                {
                    let mut s = shared.lock();
                    s.booting.remove(&server.id);
                    match result {
                        Ok(handle) if s.stopped => late = Some(handle),
                        Ok(handle) => {
                            s.vms
                                .insert(server.id.clone(), Arc::new(StdMutex::new(handle)));
                            s.times.insert(
                                server.id.clone(),
                                BootTimes {
                                    created: server.created,
                                    launched_at: server.launched_at,
                                    active_seen,
                                    booted,
                                    boot_took: started.elapsed(),
                                },
                            );
                        }
                        Err(e) => {
                            s.failed.insert(server.id.clone(), format!("{e:#}"));
                        }
                    }
                }
                drop(late);
                shared.notify();
            });
        }
        shared.notify();
    }
}

/// Standard base64 with padding (Nova's `user_data`).
pub fn base64_encode(bytes: &[u8]) -> String {
    BASE64_STANDARD.encode(bytes)
}

/// Nova's `user_data`, decoded: standard base64, padding optional, whitespace ignored;
/// `None` if invalid.
fn decode_user_data(b64: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let digits: Vec<u8> = b64.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    LENIENT.decode(digits).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), coded);
            assert_eq!(decode_user_data(coded).unwrap(), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_user_data(&base64_encode(&all)).unwrap(), all);
        assert_eq!(decode_user_data("Zm9v\nYmFy").unwrap(), b"foobar");
        assert_eq!(decode_user_data("Zm8").unwrap(), b"fo");
        assert!(decode_user_data("Zm9*").is_none());
        assert!(decode_user_data("Z").is_none());
    }

    #[test]
    fn the_credentials_match_the_image() {
        let env = RECIPE
            .iter()
            .find(|f| f.name == "credentials.env")
            .unwrap()
            .text;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("credentials.env lacks {k}"))
        };
        assert_eq!(get("ADMIN_USER"), ADMIN_USER);
        assert_eq!(get("ADMIN_PASSWORD"), ADMIN_PASSWORD);
        assert_eq!(get("ADMIN_PROJECT"), ADMIN_PROJECT);
        assert_eq!(get("CAIRN_USER"), CAIRN_USER);
        assert_eq!(get("CAIRN_PASSWORD"), CAIRN_PASSWORD);
        assert_eq!(get("CAIRN_PROJECT"), CAIRN_PROJECT);
        assert_eq!(get("REGION"), REGION);
        // The configuration files repeat the service password.
        let service = get("SERVICE_PASSWORD");
        for f in RECIPE.iter().filter(|f| f.name.ends_with(".conf")) {
            for l in f.text.lines().filter(|l| l.starts_with("password = ")) {
                assert_eq!(l, format!("password = {service}"), "{}", f.name);
            }
        }
        let setup = RECIPE.iter().find(|f| f.name == "setup.py").unwrap().text;
        assert!(setup.contains(&format!("\"id\": \"{FLAVOR_ID}\"")));
        assert!(setup.contains(&format!("\"name\": \"{FLAVOR_NAME}\"")));
        assert!(setup.contains(IMAGE_PLAIN) && setup.contains(IMAGE_AGENT));
        assert!(setup.contains(COMPUTE_HOST));
        let start = RECIPE.iter().find(|f| f.name == "start.sh").unwrap().text;
        assert!(start.contains(&format!("READY_LINE=\"{READY_LINE}\"")));
    }

    #[test]
    fn every_file_of_the_recipe_directory_goes_into_the_image() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("openstack");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = RECIPE.iter().map(|f| f.name.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
        assert_eq!(recipe_hash(), recipe_hash());
        assert_eq!(recipe_hash().len(), 16);
    }

    #[test]
    fn servers_are_read_from_novas_json() {
        let v = serde_json::json!({
            "id": "7a1", "name": "vm-1", "status": "ACTIVE", "tenant_id": "p1", "user_id": "u1",
            "OS-EXT-STS:task_state": null, "OS-EXT-SRV-ATTR:host": "cairn-compute",
            "OS-EXT-SRV-ATTR:user_data": "I2Nsb3VkLWNvbmZpZwo=",
            "OS-SRV-USG:launched_at": "2025-05-20T10:11:12.000000",
            "created": "2025-05-20T10:11:10Z",
            "image": {"id": "img-1", "links": []}, "flavor": {"id": "cairn1", "links": []},
            "metadata": {"cairn-instance": "i-1"},
        });
        let s = Server::from_json(&v).unwrap();
        assert_eq!(s.user_data.as_deref(), Some("#cloud-config\n"));
        assert_eq!(s.user_data_raw.as_deref(), Some(&b"#cloud-config\n"[..]));
        assert_eq!(s.image_id, "img-1");
        assert_eq!(s.flavor_id.as_deref(), Some("cairn1"));
        assert_eq!(
            s.metadata.get("cairn-instance").map(String::as_str),
            Some("i-1")
        );
        assert_eq!(
            s.launched_at
                .unwrap()
                .duration_since(s.created.unwrap())
                .unwrap(),
            Duration::from_secs(2)
        );
        assert!(s.wants_vm());
        let deleting = serde_json::json!({"id": "x", "status": "ACTIVE",
            "OS-EXT-STS:task_state": "deleting", "image": ""});
        let d = Server::from_json(&deleting).unwrap();
        assert!(!d.wants_vm());
        assert_eq!(d.image_id, "");
        assert_eq!(d.user_data, None);
        assert!(Server::from_json(&serde_json::json!({"name": "no id"})).is_err());
        assert!(Server::from_json(
            &serde_json::json!({"id": "y", "OS-EXT-SRV-ATTR:user_data": "!!"})
        )
        .is_err());
    }

    #[test]
    fn clouds_yaml_names_the_cloud_and_the_user() {
        let text = clouds_yaml_text(&[("auth_url", AUTH_URL), ("username", CAIRN_USER)], REGION);
        assert_eq!(
            text,
            "clouds:\n  cairn-test:\n    auth:\n      auth_url: \"http://127.0.0.1:5000/v3\"\n      \
             username: \"cairn\"\n    region_name: \"RegionOne\"\n    interface: public\n    \
             identity_api_version: 3\n"
        );
    }
}
