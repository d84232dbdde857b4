//! "VM"s for tests of what runs on a whole machine: Docker containers with systemd as
//! PID 1 and cloud-init reading a NoCloud seed, so packages, units, maintainer scripts,
//! cloud-init user-data and Ansible meet the real programs without a hypervisor.
//!
//! [`vm_image`] is Debian 12 made with debootstrap (no registry), cached by tag like
//! every test image ([`crate::images`]); [`vm_image_with_agent`] adds the
//! `cairn-agent` package, as an operator's baked cloud image would have it.
//! [`Vm::boot`] starts one with the given user-data.
//!
//! What a container cannot be, and how the tests live with it:
//! * Unprivileged (this engine refuses `--privileged`): systemd cannot make mount or
//!   UTS namespaces, so a unit's `ProtectSystem=`, `PrivateTmp=`, `ProtectHostname=`
//!   and the like are skipped (systemd logs it for some) instead of failing the
//!   unit. They are still parsed and checked; capabilities, `NoNewPrivileges=` and
//!   system call filters are enforced.
//! * `--network host`: a VM shares the machine's network, so its agent reaches a
//!   controller on 127.0.0.1 and instance containers on Docker's bridge. So does
//!   every listener in it: pick free ports (sshd is off until user-data turns it
//!   on), and expect the agent's packet filter to fail (no `CAP_NET_ADMIN` in the
//!   machine's namespace); it then reports isolation `failed`, as it should.
//! * The Docker socket is the machine's: containers an agent in a VM starts are the
//!   machine's containers, and bind mounts name the machine's paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::docker::{container_logs, ContainerGuard};
use crate::images::{
    debian_mirror, image_exists, import_tree, run_step, tail, BuildLock, UnmountUnder,
};

/// The VM image's tag; bump it when [`vm_rootfs`] changes.
pub const VM_TAG: &str = "cairn-test/vm:bookworm-1";

/// The repository of the images [`vm_image_with_agent`] makes, one tag per package.
const VM_AGENT_REPO: &str = "cairn-test/vm-agent";

/// The Debian release of the VM image.
const SUITE: &str = "bookworm";

/// What the image holds beyond debootstrap's minimal base. python3-cffi-backend is
/// named because debootstrap does not resolve virtual packages, and cloud-init's
/// python3-cryptography stays unconfigured without it; python3-apt is for Ansible's
/// `apt` module; locales for cloud-init's `locale` module.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",
    "python3-cffi-backend",
    "ca-certificates",
    "curl",
    "iproute2",
    "iptables",
    "locales",
    "openssh-server",
    "python3",
    "python3-apt",
];

/// cloud-init settings of the image.
const CLOUD_CFG: &str = "\
# Cairn's test VMs: Docker containers with systemd as PID 1 (tests/src/vm.rs).
# Only the seed the test bind-mounts; no probing of cloud metadata services.
datasource_list: [ NoCloud, None ]
# Docker owns the network (the machine's, shared); there is nothing to render.
network: {config: disabled}
# Always present, so the locale module has nothing to generate.
locale: C.UTF-8
# One host key type: RSA keys take a second of CPU to make at every first boot.
ssh_genkeytypes: [ed25519]
";

/// Units masked in the image, each with why it cannot work (or must not run) in a
/// container.
const MASKED: &[(&str, &str)] = &[
    // /etc/machine-id is empty, so every container is a first boot; this would
    // prompt on the console for a locale, a time zone and a root password.
    ("systemd-firstboot.service", "prompts on first boot"),
    ("getty@tty1.service", "no virtual terminals"),
    ("console-getty.service", "no console to log in on"),
    ("systemd-pstore.service", "no pstore in a container"),
    ("e2scrub_reap.service", "no file systems of its own"),
    ("e2scrub_all.timer", "no file systems of its own"),
    ("fstrim.timer", "no block devices of its own"),
    ("apt-daily.timer", "would reach the network at random times"),
    (
        "apt-daily-upgrade.timer",
        "would reach the network at random times",
    ),
    (
        "cloud-init-hotplugd.socket",
        "hotplug needs udev, which is absent",
    ),
];

/// The image's command and environment (`container=docker` is what systemd looks
/// for to know where it runs).
fn vm_changes() -> Vec<String> {
    vec![
        r#"CMD ["/lib/systemd/systemd"]"#.to_string(),
        "ENV container=docker".to_string(),
    ]
}

/// Debian 12 with systemd as PID 1, cloud-init (NoCloud), curl, ca-certificates,
/// iproute2, locales, openssh-server (for Ansible), python3 (for Ansible), iptables;
/// no Cairn package. Built on first use (a few minutes: debootstrap); needs root
/// and `debootstrap`. sshd is installed but not enabled (with the machine's network,
/// port 22 is the machine's): user-data turns it on, on a port of its choosing.
pub fn vm_image() -> String {
    ensure_image_keeping_owners(VM_TAG, &vm_changes(), vm_rootfs);
    VM_TAG.to_string()
}

/// [`vm_image`] plus the given cairn-agent .deb installed with dpkg: the "bake"
/// image. The unit is installed and enabled as the package leaves it, which starts
/// nothing at boot until the host is enrolled (its `ConditionPathExists`); the agent
/// is neither started nor enrolled. Tag derived from the deb's hash (and
/// [`VM_TAG`]), so a changed package makes a new image.
pub fn vm_image_with_agent(deb: &Path) -> String {
    let bytes = std::fs::read(deb)
        .unwrap_or_else(|e| panic!("cannot read the agent package {}: {e}", deb.display()));
    let mut hasher = blake3::Hasher::new();
    hasher.update(VM_TAG.as_bytes());
    hasher.update(&bytes);
    let tag = format!(
        "{VM_AGENT_REPO}:{}",
        &hasher.finalize().to_hex().as_str()[..16]
    );
    if image_exists(&tag) {
        return tag;
    }
    let base = vm_image();
    let _lock = BuildLock::acquire(&tag);
    if image_exists(&tag) {
        return tag;
    }
    let builder = format!("cairn-vm-bake-{}", std::process::id());
    let _gone = ContainerGuard(builder.clone());
    let mount = format!("{}:/var/tmp/cairn-agent.deb:ro", deb.display());
    // Installed without booting: the maintainer scripts see no running systemd,
    // so they enable the unit (symlinks) and start nothing, as in an image build.
    run_docker(
        &format!("install {} into {base}", deb.display()),
        &[
            "run",
            "--name",
            &builder,
            "--network",
            "none",
            "-v",
            &mount,
            &base,
            "dpkg",
            "-i",
            "/var/tmp/cairn-agent.deb",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // `docker commit` would keep dpkg as the command; give the image systemd back.
    let mut args = vec!["commit".to_string()];
    for change in vm_changes() {
        args.push("-c".into());
        args.push(change);
    }
    args.push(builder.clone());
    args.push(tag.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_docker(&format!("commit {tag}"), &args).unwrap_or_else(|e| panic!("{e}"));
    tag
}

/// Fills `root` with the VM image's file system: debootstrap of [`PACKAGES`], then
/// the settings that make it boot well as a container. Panics naming the failed
/// step.
fn vm_rootfs(root: &Path) {
    // debootstrap mounts /proc and /sys in the root and normally unmounts them.
    let _unmount = UnmountUnder(root.to_path_buf());
    let started = Instant::now();
    let mirror = debian_mirror();
    eprintln!("building {VM_TAG}: debootstrap {SUITE} from {mirror}");
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(root)
        .arg(&mirror);
    if let Err(e) = run_step(VM_TAG, "debootstrap", &mut debootstrap) {
        let log = std::fs::read(root.join("debootstrap/debootstrap.log"))
            .map(|l| format!("\n--- debootstrap/debootstrap.log (end) ---\n{}", tail(&l)))
            .unwrap_or_default();
        panic!("{e}{log}\n(is debootstrap installed? apt-get install debootstrap)");
    }
    let path = |p: &str| root.join(p.trim_start_matches('/'));
    let write = |p: &str, text: &str| {
        let p = path(p);
        std::fs::create_dir_all(p.parent().expect("an absolute path has a parent"))
            .and_then(|()| std::fs::write(&p, text))
            .unwrap_or_else(|e| panic!("{VM_TAG} build: write {}: {e}", p.display()));
    };
    let remove = |p: &str| {
        let p = path(p);
        let result = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) => Ok(()),
        };
        result.unwrap_or_else(|e| panic!("{VM_TAG} build: remove {}: {e}", p.display()));
    };

    write("/etc/cloud/cloud.cfg.d/90-cairn-test.cfg", CLOUD_CFG);
    for (unit, _why) in MASKED {
        let wants = std::fs::read_dir(path("/etc/systemd/system"))
            .expect("debootstrap made /etc/systemd/system")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|d| d.is_dir() && d.extension().is_some_and(|x| x == "wants"));
        for dir in wants {
            let _ = std::fs::remove_file(dir.join(unit));
        }
        let link = path(&format!("/etc/systemd/system/{unit}"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link)
            .unwrap_or_else(|e| panic!("{VM_TAG} build: mask {unit}: {e}"));
    }
    // sshd is off by default: with the machine's network it would take port 22.
    remove("/etc/systemd/system/multi-user.target.wants/ssh.service");
    remove("/etc/systemd/system/sshd.service");
    // Each VM gets its own host keys (cloud-init makes them) and machine id (systemd
    // makes one at boot when the file is empty).
    for entry in std::fs::read_dir(path("/etc/ssh")).expect("openssh-server made /etc/ssh") {
        let p = entry.expect("list /etc/ssh").path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ssh_host_"))
        {
            let _ = std::fs::remove_file(p);
        }
    }
    write("/etc/machine-id", "");
    remove("/var/lib/dbus/machine-id");
    // Forget what running cloud-init in the build might have left: the first boot
    // of each container is a first boot.
    run_step(
        VM_TAG,
        "cloud-init clean",
        Command::new("chroot")
            .arg(root)
            .args(["cloud-init", "clean", "--logs"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    run_step(
        VM_TAG,
        "apt-get clean",
        Command::new("chroot").arg(root).args(["apt-get", "clean"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for dir in [
        "/var/lib/apt/lists",
        "/usr/share/doc",
        "/usr/share/man",
        "/usr/share/info",
    ] {
        remove(dir);
        std::fs::create_dir_all(path(dir)).expect("recreate an emptied directory");
    }
    std::fs::create_dir_all(path("/var/lib/apt/lists/partial")).expect("recreate apt's lists");
    // Docker supplies the machine's at run time.
    write("/etc/resolv.conf", "");
    eprintln!(
        "building {VM_TAG}: root file system ready after {} s; importing",
        started.elapsed().as_secs()
    );
}

/// Like [`crate::images::ensure_image_with_changes`], but the image keeps the
/// owners of the root's files: a whole system has files that are not root's
/// (the journal's group, sshd's and dbus's), which `ensure_image` flattens.
fn ensure_image_keeping_owners(tag: &str, changes: &[String], build: impl FnOnce(&Path)) {
    if image_exists(tag) {
        return;
    }
    let _lock = BuildLock::acquire(tag);
    if image_exists(tag) {
        return;
    }
    let root = tempfile::Builder::new()
        .prefix("cairn-vm-root-")
        .tempdir()
        .expect("create a temporary directory for the root fs");
    build(root.path());
    import_tree(root.path(), tag, changes, false);
}

/// `docker ARGS`; its stdout, or an error naming `what` with docker's stderr.
fn run_docker(what: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run docker"))?;
    if !out.status.success() {
        bail!(
            "{what}: docker {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `name` as a host name: lower-case letters, digits and dashes, at most 63.
fn host_name_for(name: &str) -> String {
    let mut h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while h.ends_with('-') {
        h.pop();
    }
    if h.is_empty() {
        h = "vm".into();
    }
    h
}

/// The label naming the test process that booted a VM.
const OWNER_LABEL: &str = "cairn-test.owner";

/// Removes VM containers whose test process has exited without removing them
/// (killed): with the machine's network they would go on holding ports and
/// running agents.
fn remove_orphans() {
    let Ok(out) = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=cairn-test=vm",
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}"),
        ])
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let (Some(id), Some(pid)) = (words.next(), words.next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            drop(ContainerGuard(id.to_string()));
        }
    }
}

/// Longest wait for systemd in a new container to answer at all.
const PID1_WAIT: Duration = Duration::from_secs(60);

/// Longest wait for cloud-init, or for the system to finish starting, in seconds
/// (`timeout` inside the VM bounds it).
const BOOT_WAIT_SECS: u32 = 240;

/// A running VM container; removed (`docker rm -f`) when dropped.
pub struct Vm {
    /// The container's name.
    pub name: String,
    /// The host name the VM has (`hostname`, `/etc/hostname`, cloud-init's
    /// `local-hostname`): [`Vm::name`] made a valid host name.
    pub hostname: String,
    /// The NoCloud seed, bind-mounted into the container; removed with the VM.
    _seed: tempfile::TempDir,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("name", &self.name).finish()
    }
}

impl Vm {
    /// `docker run -d --network host --tmpfs /run --tmpfs /run/lock -v
    /// /sys/fs/cgroup:/sys/fs/cgroup:ro -v /var/run/docker.sock:/var/run/docker.sock`
    /// with a NoCloud seed dir (user-data as given, meta-data with `instance-id:
    /// <instance_id>` and `local-hostname`) bind-mounted read-only at
    /// /var/lib/cloud/seed/nocloud; label cairn-test=vm. A container left with
    /// this name, and VMs whose test process is gone (a killed run), are removed
    /// first. Returns once systemd in it
    /// answers (about a second), not when booted: see [`Vm::wait_running`] and
    /// [`Vm::cloud_init_wait`].
    pub fn boot(name: &str, image: &str, instance_id: &str, user_data: &str) -> anyhow::Result<Vm> {
        let hostname = host_name_for(name);
        let seed = tempfile::Builder::new()
            .prefix("cairn-vm-seed-")
            .tempdir()
            .context("create the NoCloud seed directory")?;
        // JSON strings are YAML strings: any id or name is quoted safely.
        let meta = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            serde_json::to_string(instance_id)?,
            serde_json::to_string(&hostname)?
        );
        std::fs::write(seed.path().join("meta-data"), meta).context("write meta-data")?;
        std::fs::write(seed.path().join("user-data"), user_data).context("write user-data")?;
        remove_orphans();
        let _ = Command::new("docker")
            .args(["rm", "-f", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let owner = format!("{OWNER_LABEL}={}", std::process::id());
        let seed_mount = format!("{}:/var/lib/cloud/seed/nocloud:ro", seed.path().display());
        run_docker(
            &format!("boot VM {name}"),
            &[
                "run",
                "-d",
                "--name",
                name,
                // The kernel's host name as well as cloud-init's: cloud-init cannot
                // set it without CAP_SYS_ADMIN, and the agent reports this one.
                "--hostname",
                &hostname,
                "--label",
                "cairn-test=vm",
                "--label",
                &owner,
                "--network",
                "host",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/run/lock",
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup:ro",
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                "-v",
                &seed_mount,
                image,
            ],
        )?;
        let vm = Vm {
            name: name.to_string(),
            hostname,
            _seed: seed,
        };
        vm.wait_pid1()?;
        Ok(vm)
    }

    /// Waits until systemd answers `systemctl` (its private socket exists).
    fn wait_pid1(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let out = self.exec(&["systemctl", "is-system-running"])?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            // Any state at all means PID 1 answered; "offline" and an empty answer
            // mean it has not yet come up.
            if !state.is_empty() && state != "offline" {
                return Ok(());
            }
            if start.elapsed() > PID1_WAIT {
                bail!(
                    "systemd in VM {} did not answer within {PID1_WAIT:?}: {}{}\n--- docker logs ---\n{}",
                    self.name,
                    state,
                    String::from_utf8_lossy(&out.stderr),
                    container_logs(&self.name, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `docker exec NAME ARGS...`: its output whatever its exit status; an error
    /// only if docker could not be run.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("docker")
            .arg("exec")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("docker exec {} {}", self.name, args.join(" ")))
    }

    /// [`Vm::exec`] that must succeed: its stdout (trimmed), or an error with the
    /// command, its exit status and its stderr.
    pub fn exec_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.exec(args)?;
        if !out.status.success() {
            bail!(
                "in VM {}: `{}` failed ({}):\n{}{}",
                self.name,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `sh -c SCRIPT` in the VM, which must succeed: its stdout (trimmed).
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.exec_ok(&["sh", "-c", script])
    }

    /// `cloud-init status --wait --long` output (bounded wait). An error, with the
    /// output and the end of cloud-init's logs, if cloud-init ended in error or
    /// did not finish within the bound.
    pub fn cloud_init_wait(&self) -> anyhow::Result<String> {
        let out = self.exec(&[
            "timeout",
            &BOOT_WAIT_SECS.to_string(),
            "cloud-init",
            "status",
            "--wait",
            "--long",
        ])?;
        // The dots `--wait` prints while waiting carry no information.
        let text = String::from_utf8_lossy(&out.stdout)
            .trim_start_matches('.')
            .trim()
            .to_string();
        if out.status.success() {
            return Ok(text);
        }
        let why = if out.status.code() == Some(124) {
            format!("did not finish within {BOOT_WAIT_SECS} s")
        } else {
            format!("ended with {}", out.status)
        };
        let logs = self
            .exec(&[
                "sh",
                "-c",
                "tail -n 40 /var/log/cloud-init-output.log; grep -E 'WARNING|ERROR|Traceback' /var/log/cloud-init.log | tail -n 20",
            ])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Err(anyhow!(
            "cloud-init in VM {} {why}:\n{text}\n{}\n--- cloud-init logs (end) ---\n{logs}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Waits until systemd has started everything (`systemctl is-system-running
    /// --wait`, bounded); returns the state, `running` or `degraded`. An error naming
    /// the failed units otherwise.
    pub fn wait_running(&self) -> anyhow::Result<String> {
        let out = self.exec(&[
            "timeout",
            &BOOT_WAIT_SECS.to_string(),
            "systemctl",
            "is-system-running",
            "--wait",
        ])?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if state == "running" || state == "degraded" {
            return Ok(state);
        }
        let failed = self
            .exec(&["systemctl", "--failed", "--no-pager"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Err(anyhow!(
            "VM {} did not finish booting: {state:?} ({}) {}\n{failed}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// `journalctl -u unit --no-pager` tail, for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        match self.exec(&[
            "journalctl",
            "-u",
            unit,
            "--no-pager",
            "-n",
            "200",
            "-o",
            "short-precise",
        ]) {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("(no journal of {unit}: {e})"),
        }
    }

    /// Copies a host file into the VM (`docker cp`; not into a tmpfs such as /run,
    /// which `docker cp` cannot see). The file keeps its mode; root owns it.
    pub fn copy_in(&self, from: &Path, to: &str) -> anyhow::Result<()> {
        run_docker(
            &format!("copy {} into VM {}:{to}", from.display(), self.name),
            &[
                "cp",
                &from.display().to_string(),
                &format!("{}:{to}", self.name),
            ],
        )?;
        Ok(())
    }

    /// The file at `path` in the VM, as text.
    pub fn read_file(&self, path: &str) -> anyhow::Result<String> {
        let out = self.exec(&["cat", path])?;
        if !out.status.success() {
            bail!(
                "in VM {}: cannot read {path}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the machine said last, for the failing test's report.
            let said = self
                .exec(&[
                    "sh",
                    "-c",
                    "systemctl --failed --no-pager; journalctl --no-pager -n 80 -o short-precise",
                ])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            eprintln!(
                "----- VM {} (failed units, journal end) -----\n{said}",
                self.name
            );
        }
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Where a file of this repository is, from the tests crate.
pub(crate) fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_valid() {
        assert_eq!(host_name_for("cairn-pkg-123"), "cairn-pkg-123");
        assert_eq!(host_name_for("Cairn_Pkg.1-"), "cairn-pkg-1");
        assert_eq!(host_name_for("__"), "vm");
        assert_eq!(host_name_for(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn masked_units_are_named_once() {
        let mut names: Vec<&str> = MASKED.iter().map(|(u, _)| *u).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MASKED.len());
        assert!(repo_path("packaging/systemd/cairn-agent.service").exists());
    }
}
