//! The Debian packages on a real Debian with systemd as PID 1 (a "VM" container,
//! `cairn_tests::vm`): dpkg runs the real maintainer scripts, systemd the real
//! units, and the services are driven the way the units' comments tell an operator.
//!
//! * Installing the three packages makes the service user and directories, installs
//!   and enables the units without starting them (the controller waits for `init`,
//!   the agent for `join`), and `systemd-analyze verify` accepts the units. After
//!   `init`, `systemctl start cairn-controller` returns once the API answers
//!   (Type=notify); after `join`, `systemctl start cairn-agent` returns once the
//!   controller lists the host as active. The hardening that a container can
//!   enforce (capabilities, no_new_privs, seccomp, the user) is checked on the
//!   running processes.
//! * Upgrading to a higher version keeps the state and the operator's edit of a
//!   conffile, and restarts both services, which pick the edit up.
//! * Removing keeps state and configuration; purging removes the configuration but
//!   still keeps /var/lib/cairn and /var/lib/cairn-agent (the CA and the enrolment:
//!   losing them means re-enrolling every host; an operator deletes them by hand).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use cairn_tests::cluster::{free_tcp_port, free_udp_port};
use cairn_tests::debs::{debs, debs_with_version, Debs};
use cairn_tests::require::{require, Need};
use cairn_tests::vm::{vm_image, Vm};

/// Files whose bytes must survive upgrades, removal and purge.
const STATE_FILES: &[&str] = &[
    "/var/lib/cairn/config.toml",
    "/var/lib/cairn/ca.crt",
    "/var/lib/cairn/ca.key",
    "/var/lib/cairn/admin.token",
    "/var/lib/cairn-agent/agent.toml",
    "/var/lib/cairn-agent/agent.key",
    "/var/lib/cairn-agent/ca.crt",
];

/// The capabilities the agent's unit leaves it (CAP_CHOWN 0, DAC_OVERRIDE 1,
/// DAC_READ_SEARCH 2, FOWNER 3, NET_ADMIN 12, NET_RAW 13), as a mask.
const AGENT_CAPS: u64 = 0x300f;

/// A process's capability bounding set, from its /proc status.
fn cap_bnd(status: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap_or_else(|| panic!("no CapBnd in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// A file of this repository (the tests crate is one level down).
fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// A booted VM for one test.
fn boot(what: &str) -> Vm {
    let name = format!("cairn-pkg-{what}-{}", std::process::id());
    let vm = Vm::boot(&name, &vm_image(), &name, "#cloud-config\n{}\n").unwrap();
    vm.wait_running().unwrap();
    vm
}

/// `dpkg -i` of the given packages (copied in first); returns dpkg's output and
/// how long dpkg took.
fn dpkg_install(vm: &Vm, debs: &Debs) -> (String, Duration) {
    let mut args = vec!["env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "-i"];
    let mut inside = Vec::new();
    for deb in debs.all() {
        let to = format!("/var/tmp/{}", deb.file_name().unwrap().to_string_lossy());
        vm.copy_in(deb, &to).unwrap();
        inside.push(to);
    }
    args.extend(inside.iter().map(String::as_str));
    let started = Instant::now();
    let out = vm.exec(&args).unwrap();
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "dpkg -i failed ({}):\n{text}",
        out.status
    );
    (text, took)
}

/// Whether `unit`'s start conditions held at its last start (`no`: skipped).
fn condition_result(vm: &Vm, unit: &str) -> String {
    vm.exec_ok(&[
        "systemctl",
        "show",
        "-p",
        "ConditionResult",
        "--value",
        unit,
    ])
    .unwrap()
}

/// `systemctl is-active UNIT` (its answer, whatever the exit status).
fn is_active(vm: &Vm, unit: &str) -> String {
    let out = vm.exec(&["systemctl", "is-active", unit]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `systemctl start UNIT`, bounded; asserts it is active afterwards and returns how
/// long the start took (Type=notify: until the service said READY=1).
fn start(vm: &Vm, unit: &str) -> Duration {
    let started = Instant::now();
    let out = vm
        .exec(&["timeout", "150", "systemctl", "start", unit])
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "systemctl start {unit} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        vm.journal(unit)
    );
    assert_eq!(is_active(vm, unit), "active", "{}", vm.journal(unit));
    took
}

/// The main process of a running unit.
fn main_pid(vm: &Vm, unit: &str) -> String {
    let pid = vm
        .exec_ok(&["systemctl", "show", "-p", "MainPID", "--value", unit])
        .unwrap();
    assert!(pid != "0" && !pid.is_empty(), "{unit} has no main process");
    pid
}

/// The controller's ports and CA fingerprint once `init` ran in the VM.
struct Initialised {
    api: u16,
    link: u16,
    ca_sha256: String,
}

/// `cairn-controller init` as the service user, as the unit's comment says, on
/// free loopback ports (the VM shares the machine's network).
fn init_controller(vm: &Vm) -> Initialised {
    let (api, link) = (free_tcp_port(), free_udp_port());
    let out = vm
        .exec_ok(&[
            "runuser",
            "-u",
            "cairn",
            "--",
            "cairn-controller",
            "init",
            "--server-name",
            "127.0.0.1",
            "--api-listen",
            &format!("127.0.0.1:{api}"),
            "--link-listen",
            &format!("127.0.0.1:{link}"),
        ])
        .unwrap();
    let ca_sha256 = out
        .lines()
        .find_map(|l| l.strip_prefix("CA fingerprint: "))
        .unwrap_or_else(|| panic!("no CA fingerprint in init's output:\n{out}"))
        .trim()
        .to_string();
    Initialised {
        api,
        link,
        ca_sha256,
    }
}

/// Enrols the VM's agent (the token from `cairn-controller token create`, run as
/// the service user, handed over in CAIRN_JOIN_TOKEN); returns the host id.
fn join_agent(vm: &Vm, ctl: &Initialised) -> String {
    let token = vm
        .exec_ok(&[
            "runuser",
            "-u",
            "cairn",
            "--",
            "cairn-controller",
            "token",
            "create",
            "--ttl",
            "10m",
            "--quiet",
        ])
        .unwrap();
    assert!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "{token:?}"
    );
    let out = vm
        .exec_ok(&[
            "env",
            &format!("CAIRN_JOIN_TOKEN={token}"),
            "cairn-agent",
            "join",
            "--controller",
            &format!("127.0.0.1:{}", ctl.link),
            "--ca-sha256",
            &ctl.ca_sha256,
            "--label",
            "packaged=yes",
        ])
        .unwrap();
    let host = out
        .lines()
        .find_map(|l| l.strip_prefix("enrolled as host "))
        .and_then(|l| l.split(';').next())
        .unwrap_or_else(|| panic!("no host id in join's output:\n{out}"))
        .to_string();
    host
}

/// The hosts as the packaged `cairn` CLI lists them for the admin.
fn hosts(vm: &Vm, ctl: &Initialised) -> Vec<serde_json::Value> {
    let admin = vm.read_file("/var/lib/cairn/admin.token").unwrap();
    let out = vm
        .exec_ok(&[
            "env",
            &format!("CAIRN_URL=http://127.0.0.1:{}", ctl.api),
            &format!("CAIRN_TOKEN={}", admin.trim()),
            "cairn",
            "hosts",
            "--json",
        ])
        .unwrap();
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap_or_else(|e| panic!("cairn hosts --json is not JSON ({e}):\n{out}"))
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("cairn hosts --json is not a list:\n{out}"))
}

/// The one host `id` in the controller's list, which must be there.
fn listed_host(vm: &Vm, ctl: &Initialised, id: &str) -> serde_json::Value {
    let all = hosts(vm, ctl);
    all.iter()
        .find(|h| h["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("host {id} is not listed: {all:#?}"))
}

/// SHA-256 of each of [`STATE_FILES`], as `sha256sum` prints them.
fn state_sums(vm: &Vm) -> String {
    let mut args = vec!["sha256sum"];
    args.extend(STATE_FILES);
    vm.exec_ok(&args).unwrap()
}

/// Installs the packages, initialises and starts the controller, enrols and starts
/// the agent: the state the upgrade and removal tests start from. Returns the
/// controller's settings and the host id.
fn installed_and_running(vm: &Vm, debs: &Debs) -> (Initialised, String) {
    dpkg_install(vm, debs);
    let ctl = init_controller(vm);
    start(vm, "cairn-controller");
    let host = join_agent(vm, &ctl);
    start(vm, "cairn-agent");
    assert_eq!(listed_host(vm, &ctl, &host)["state"], "active");
    (ctl, host)
}

#[test]
fn packages_install_and_the_services_start_as_their_units_say() {
    if !require(&[Need::Docker, Need::Vm, Need::CargoDeb]) {
        return;
    }
    let debs = debs();
    for deb in debs.all() {
        let size = std::fs::metadata(deb).unwrap().len();
        eprintln!(
            "measure: {} is {:.1} MiB",
            deb.file_name().unwrap().to_string_lossy(),
            size as f64 / (1024.0 * 1024.0)
        );
    }
    let vm = boot("install");

    let (said, took) = dpkg_install(&vm, &debs);
    eprintln!("measure: dpkg -i of the three packages took {took:.2?}");
    // First installs say what to do next.
    assert!(
        said.contains("runuser -u cairn -- cairn-controller init"),
        "{said}"
    );
    assert!(said.contains("cairn-agent join --controller"), "{said}");

    // The service user and the directories, with their owners and modes.
    let user = vm.exec_ok(&["getent", "passwd", "cairn"]).unwrap();
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(
        fields[5..],
        ["/var/lib/cairn", "/usr/sbin/nologin"],
        "{user}"
    );
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "cairn is a system user: {user}");
    assert_eq!(
        vm.exec_ok(&[
            "stat",
            "-c",
            "%U:%G %a",
            "/var/lib/cairn",
            "/var/lib/cairn-agent",
            "/etc/cairn"
        ])
        .unwrap(),
        "cairn:cairn 700\nroot:root 700\nroot:cairn 750"
    );
    assert!(
        vm.exec(&["getent", "passwd", "cairn-agent"])
            .unwrap()
            .stdout
            .is_empty(),
        "the agent runs as root and has no user"
    );
    // The environment files are the packaged ones, and dpkg knows them as conffiles.
    for pkg in ["cairn-controller", "cairn-agent"] {
        assert_eq!(
            vm.read_file(&format!("/etc/default/{pkg}")).unwrap(),
            std::fs::read_to_string(repo_path(&format!("packaging/default/{pkg}"))).unwrap()
        );
        let conffiles = vm
            .exec_ok(&["dpkg-query", "-W", "-f", "${Conffiles}", pkg])
            .unwrap();
        assert!(
            conffiles.contains(&format!("/etc/default/{pkg} ")),
            "{conffiles}"
        );
    }
    assert_eq!(
        vm.exec_ok(&["cairn", "--version"]).unwrap(),
        format!("cairn {}", env!("CARGO_PKG_VERSION"))
    );

    // The units: the packaged files, accepted by systemd, enabled, not started.
    for unit in ["cairn-controller.service", "cairn-agent.service"] {
        let installed = vm
            .read_file(&format!("/usr/lib/systemd/system/{unit}"))
            .unwrap();
        assert_eq!(
            installed,
            std::fs::read_to_string(repo_path(&format!("packaging/systemd/{unit}"))).unwrap()
        );
        assert_eq!(
            vm.exec_ok(&["systemctl", "is-enabled", unit]).unwrap(),
            "enabled"
        );
        assert_eq!(is_active(&vm, unit), "inactive");
    }
    let verify = vm
        .exec(&[
            "systemd-analyze",
            "verify",
            "/usr/lib/systemd/system/cairn-controller.service",
            "/usr/lib/systemd/system/cairn-agent.service",
        ])
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !complaints.contains("cairn"),
        "systemd-analyze verify ({}):\n{complaints}",
        verify.status
    );
    for unit in ["cairn-controller.service", "cairn-agent.service"] {
        let security = vm
            .exec(&["systemd-analyze", "security", "--no-pager", unit])
            .unwrap();
        let text = String::from_utf8_lossy(&security.stdout);
        let overall = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{text}"));
        eprintln!("measure: {}", overall.trim_start_matches(['→', ' ']));
        // "… for cairn-agent.service: 2.7 OK :-)": well inside "OK" (below 4.0);
        // a lost hardening line shows here. The agent keeps root and some
        // capabilities, so it scores higher than the controller.
        let score: f64 = overall
            .split(": ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no score in {overall:?}"));
        let most = if unit == "cairn-agent.service" {
            3.0
        } else {
            1.5
        };
        assert!(score <= most, "{unit} scores {score} > {most}:\n{text}");
    }

    // Not initialised: starting is a no-op that says why, not a failure loop.
    vm.exec_ok(&["systemctl", "start", "cairn-controller"])
        .unwrap();
    assert_eq!(is_active(&vm, "cairn-controller"), "inactive");
    assert_eq!(condition_result(&vm, "cairn-controller"), "no");

    let ctl = init_controller(&vm);
    let took = start(&vm, "cairn-controller");
    eprintln!("measure: systemctl start cairn-controller (to READY=1) took {took:.2?}");
    // Ready means serving: no wait, no retry.
    let health = vm
        .exec_ok(&[
            "curl",
            "-fsS",
            &format!("http://127.0.0.1:{}/healthz", ctl.api),
        ])
        .unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert!(health.is_object(), "{health}");
    let pid = main_pid(&vm, "cairn-controller");
    assert_eq!(
        vm.exec_ok(&["stat", "-c", "%U", &format!("/proc/{pid}")])
            .unwrap(),
        "cairn"
    );
    let status = vm.read_file(&format!("/proc/{pid}/status")).unwrap();
    for line in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(
            status.contains(line),
            "controller lacks {line:?}:\n{status}"
        );
    }

    let host = join_agent(&vm, &ctl);
    let took = start(&vm, "cairn-agent");
    eprintln!("measure: systemctl start cairn-agent (link up, READY=1) took {took:.2?}");
    // Ready means linked: the controller lists the host, active, under the VM's name.
    let listed = listed_host(&vm, &ctl, &host);
    assert_eq!(listed["state"], "active", "{listed:#}");
    assert_eq!(listed["hostname"], vm.hostname.as_str(), "{listed:#}");
    assert_eq!(listed["labels"]["packaged"], "yes", "{listed:#}");
    assert_eq!(hosts(&vm, &ctl).len(), 1);
    // Unprivileged container: the packet filter cannot be installed, and says so.
    eprintln!("isolation in the VM: {}", listed["isolation"]);
    let pid = main_pid(&vm, "cairn-agent");
    let status = vm.read_file(&format!("/proc/{pid}/status")).unwrap();
    for line in ["Uid:\t0\t0\t0\t0", "NoNewPrivs:\t1", "Seccomp:\t2"] {
        assert!(status.contains(line), "agent lacks {line:?}:\n{status}");
    }
    // What the unit leaves, within what the container has at all (Docker gives
    // it neither CAP_NET_ADMIN nor CAP_DAC_READ_SEARCH).
    let container = cap_bnd(&vm.read_file("/proc/1/status").unwrap());
    assert_eq!(
        cap_bnd(&status),
        AGENT_CAPS & container,
        "agent's bounding set {:#x}, container's {container:#x}",
        cap_bnd(&status)
    );
}

#[test]
fn an_upgrade_keeps_state_and_edited_conffiles_and_restarts_the_services() {
    if !require(&[Need::Docker, Need::Vm, Need::CargoDeb]) {
        return;
    }
    let (old, new) = (debs(), debs_with_version("0.1.1-1"));
    let vm = boot("upgrade");
    let (ctl, host) = installed_and_running(&vm, &old);
    let sums = state_sums(&vm);
    // The operator's edit of a conffile the new package ships unchanged.
    // (systemd takes a `#` after a value as part of it: the comment has a line.)
    vm.sh("printf '# edited by the test\\nRUST_LOG=debug\\n' >> /etc/default/cairn-controller")
        .unwrap();
    let edited = vm.read_file("/etc/default/cairn-controller").unwrap();
    let pids = (
        main_pid(&vm, "cairn-controller"),
        main_pid(&vm, "cairn-agent"),
    );

    let (said, took) = dpkg_install(&vm, &new);
    eprintln!("measure: dpkg -i upgrading the three packages took {took:.2?}");
    // Not a first install: no instructions again.
    assert!(!said.contains("starts once"), "{said}");
    for pkg in ["cairn-controller", "cairn-agent", "cairn-cli"] {
        assert_eq!(
            vm.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", pkg])
                .unwrap(),
            new.version
        );
    }
    assert_eq!(state_sums(&vm), sums, "state changed in the upgrade");
    assert_eq!(
        vm.read_file("/etc/default/cairn-controller").unwrap(),
        edited
    );

    // Restarted (new processes), active, and running with the edited environment.
    for (unit, old_pid) in [("cairn-controller", &pids.0), ("cairn-agent", &pids.1)] {
        assert_eq!(is_active(&vm, unit), "active", "{}", vm.journal(unit));
        assert_ne!(&main_pid(&vm, unit), old_pid, "{unit} was not restarted");
    }
    // Read as the service's user: root in the container may not read another
    // user's environ (no CAP_SYS_PTRACE).
    let environ = vm
        .exec_ok(&[
            "runuser",
            "-u",
            "cairn",
            "--",
            "cat",
            &format!("/proc/{}/environ", main_pid(&vm, "cairn-controller")),
        ])
        .unwrap();
    assert!(
        environ.split('\0').any(|v| v == "RUST_LOG=debug"),
        "the restarted controller did not read the edited conffile: {environ:?}"
    );
    // The same host, reconnected: the store and the enrolment survived.
    let listed = listed_host(&vm, &ctl, &host);
    assert_eq!(listed["state"], "active", "{listed:#}");
    assert_eq!(hosts(&vm, &ctl).len(), 1);
}

#[test]
fn remove_keeps_state_and_config_and_purge_keeps_state() {
    if !require(&[Need::Docker, Need::Vm, Need::CargoDeb]) {
        return;
    }
    let debs = debs();
    let vm = boot("remove");
    installed_and_running(&vm, &debs);
    let sums = state_sums(&vm);
    let defaults: Vec<String> = ["cairn-controller", "cairn-agent"]
        .iter()
        .map(|p| vm.read_file(&format!("/etc/default/{p}")).unwrap())
        .collect();
    let cairn_processes =
        "for f in /proc/[0-9]*/comm; do cat \"$f\" 2>/dev/null; done | grep -c '^cairn' || true";

    vm.exec_ok(&["dpkg", "-r", "cairn-controller", "cairn-agent", "cairn-cli"])
        .unwrap();
    assert_eq!(
        vm.sh(cairn_processes).unwrap(),
        "0",
        "services left running"
    );
    for pkg in ["cairn-controller", "cairn-agent"] {
        assert_eq!(
            vm.exec_ok(&["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", pkg])
                .unwrap(),
            "rc",
            "{pkg} is not removed-with-config"
        );
    }
    // The CLI has no configuration: removed is gone.
    assert!(!vm
        .exec(&["dpkg-query", "-W", "cairn-cli"])
        .unwrap()
        .status
        .success());
    for gone in [
        "/usr/bin/cairn-controller",
        "/usr/bin/cairn-agent",
        "/usr/bin/cairn",
        "/usr/lib/systemd/system/cairn-controller.service",
    ] {
        assert!(
            vm.exec(&["test", "-e", gone]).unwrap().status.code() == Some(1),
            "{gone} is still there"
        );
    }
    assert_eq!(state_sums(&vm), sums, "dpkg -r changed the state");
    for (p, text) in ["cairn-controller", "cairn-agent"].iter().zip(&defaults) {
        assert_eq!(&vm.read_file(&format!("/etc/default/{p}")).unwrap(), text);
    }
    vm.exec_ok(&["test", "-d", "/etc/cairn"]).unwrap();

    let said = vm
        .exec_ok(&["dpkg", "-P", "cairn-controller", "cairn-agent"])
        .unwrap();
    assert!(said.contains("kept /var/lib/cairn "), "{said}");
    assert!(said.contains("kept /var/lib/cairn-agent "), "{said}");
    assert_eq!(state_sums(&vm), sums, "dpkg -P changed the state");
    for gone in [
        "/etc/default/cairn-controller",
        "/etc/default/cairn-agent",
        "/etc/cairn",
    ] {
        assert!(
            vm.exec(&["test", "-e", gone]).unwrap().status.code() == Some(1),
            "{gone} survived purge"
        );
    }
    // No unit symlink, mask or enablement left behind.
    assert_eq!(
        vm.sh("find /etc/systemd -name 'cairn*'").unwrap(),
        "",
        "purge left systemd links"
    );
    assert!(
        !vm.exec(&["dpkg-query", "-W", "cairn-controller"])
            .unwrap()
            .status
            .success(),
        "dpkg still knows cairn-controller after purge"
    );
    // The user keeps owning the kept state.
    vm.exec_ok(&["getent", "passwd", "cairn"]).unwrap();
    assert_eq!(
        vm.exec_ok(&["stat", "-c", "%U", "/var/lib/cairn/ca.key"])
            .unwrap(),
        "cairn"
    );
}

#[test]
fn the_vm_image_boots_clean_and_runs_its_user_data() {
    if !require(&[Need::Docker, Need::Vm]) {
        return;
    }
    let image = vm_image();
    let name = format!("cairn-pkg-boot-{}", std::process::id());
    let user_data = "#cloud-config\n\
        write_files:\n  - path: /etc/cairn-test/said\n    content: hello from user-data\n\
        runcmd:\n  - [sh, -c, 'hostname > /etc/cairn-test/hostname']\n";
    let started = Instant::now();
    let vm = Vm::boot(&name, &image, "i-boot-1", user_data).unwrap();
    let status = vm.cloud_init_wait().unwrap();
    eprintln!(
        "measure: docker run to cloud-init done took {:.2?}",
        started.elapsed()
    );
    assert!(status.contains("status: done"), "{status}");
    assert!(status.contains("DataSourceNoCloud"), "{status}");
    // Nothing failed: every unit that cannot work in a container is masked.
    assert_eq!(vm.wait_running().unwrap(), "running");
    assert_eq!(
        vm.read_file("/etc/cairn-test/said").unwrap(),
        "hello from user-data"
    );
    assert_eq!(
        vm.read_file("/etc/cairn-test/hostname").unwrap().trim(),
        vm.hostname
    );
    assert_eq!(vm.read_file("/etc/hostname").unwrap().trim(), vm.hostname);
    assert_eq!(
        vm.exec_ok(&["cloud-init", "query", "v1.instance_id"])
            .unwrap(),
        "i-boot-1"
    );
    // sshd is off until user-data turns it on (the VM shares the machine's port 22).
    assert_eq!(is_active(&vm, "ssh"), "inactive");
    // The machine's Docker Engine answers through the socket.
    let ping = vm
        .exec_ok(&[
            "curl",
            "-fsS",
            "--unix-socket",
            "/var/run/docker.sock",
            "http://docker/_ping",
        ])
        .unwrap();
    assert_eq!(ping, "OK");
    // Files keep their owners from the build (the journal's group, not root's).
    assert_eq!(
        vm.exec_ok(&["stat", "-c", "%G", "/var/log/journal"])
            .unwrap(),
        "systemd-journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baked_image_starts_the_agent_once_enrolled() {
    if !require(&[Need::Docker, Need::Vm, Need::CargoDeb]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = cairn_tests::cluster::Controller::init(
        tmp.path(),
        &cairn_tests::cluster::ControllerOptions::default(),
    );
    ctl.start().await;
    let image = cairn_tests::vm::vm_image_with_agent(&debs().agent);
    // The same package makes the same image.
    assert_eq!(cairn_tests::vm::vm_image_with_agent(&debs().agent), image);
    let name = format!("cairn-pkg-bake-{}", std::process::id());
    let vm = Vm::boot(&name, &image, &name, "#cloud-config\n{}\n").unwrap();
    assert_eq!(vm.wait_running().unwrap(), "running");
    // Installed and enabled, but not enrolled: skipped at boot, not failed.
    assert_eq!(
        vm.exec_ok(&["systemctl", "is-enabled", "cairn-agent"])
            .unwrap(),
        "enabled"
    );
    assert_eq!(is_active(&vm, "cairn-agent"), "inactive");
    assert_eq!(condition_result(&vm, "cairn-agent"), "no");
    vm.exec_ok(&["test", "!", "-e", "/var/lib/cairn-agent/agent.toml"])
        .unwrap();

    // What a host's first boot does: join, then enable --now.
    let token = ctl.token("5m", 1);
    vm.exec_ok(&[
        "env",
        &format!("CAIRN_JOIN_TOKEN={token}"),
        "cairn-agent",
        "join",
        "--controller",
        &ctl.link.to_string(),
        "--ca-sha256",
        &ctl.ca_sha256,
    ])
    .unwrap();
    vm.exec_ok(&["systemctl", "enable", "--now", "cairn-agent"])
        .unwrap();
    assert_eq!(
        is_active(&vm, "cairn-agent"),
        "active",
        "{}",
        vm.journal("cairn-agent")
    );
    let hosts = ctl.hosts().await;
    let host = hosts
        .iter()
        .find(|h| h["hostname"] == vm.hostname.as_str())
        .unwrap_or_else(|| panic!("{} is not listed: {hosts:#?}", vm.hostname));
    assert_eq!(host["state"], "active", "{host:#}");
}
