//! The Ansible roles (ansible/) against a real Debian over SSH: a "VM" container
//! (`cairn_tests::vm`) with sshd on a free loopback port, a controller started by
//! the harness, and `ansible-playbook site.yml` run for the agents' group with the
//! `docker_host` role told not to install an engine (the VM has the machine's
//! Docker socket). The host must come up active in the controller's list, and a
//! second run must change nothing. `ansible-lint` must find nothing in ansible/.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::cluster::{free_tcp_port, Controller, ControllerOptions};
use cairn_tests::debs::debs;
use cairn_tests::require::{require, Need};
use cairn_tests::vm::{vm_image, Vm};

/// The repository's ansible/ directory.
fn ansible_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ansible")
}

/// Output as text, stdout then stderr.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `ok=… changed=… unreachable=… failed=…` counts of `host` in a play recap.
fn recap(output: &str, host: &str) -> Vec<(String, u32)> {
    output
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(host) && l.contains("changed="))
        .unwrap_or_else(|| panic!("no recap line for {host}:\n{output}"))
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The first result line (`ok: [...]`, `changed: [...]`, `skipping: [...]`) of the
/// task called `task` in a playbook's output.
fn task_result<'a>(output: &'a str, task: &str) -> &'a str {
    let header = format!("TASK [{task}]");
    let mut lines = output.lines().skip_while(|l| !l.starts_with(&header));
    assert!(lines.next().is_some(), "no task {task:?} in:\n{output}");
    lines
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("task {task:?} has no result in:\n{output}"))
}

fn count(recap: &[(String, u32)], key: &str) -> u32 {
    recap
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {key} in the recap {recap:?}"))
}

#[test]
fn the_roles_are_lint_clean() {
    if !require(&[Need::Ansible]) {
        return;
    }
    // --offline: nothing to fetch (the roles use ansible.builtin only).
    let out = Command::new("ansible-lint")
        .args(["--offline", "--nocolor", "--strict"])
        .current_dir(ansible_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run ansible-lint");
    let said = text(&out);
    assert!(out.status.success(), "ansible-lint found problems:\n{said}");
    // It did look at the roles (a mistyped directory would also "pass").
    assert!(
        said.contains("Passed") && said.contains("production"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_role_enrols_a_host_once_and_then_changes_nothing() {
    if !require(&[Need::Docker, Need::Vm, Need::CargoDeb, Need::Ansible]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let token = ctl.token("10m", 1);
    let debs = debs();

    // A key for root, and sshd on a free port (the VM shares the machine's network).
    let key = tmp.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cairn-test", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", text(&out));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let port = free_tcp_port();
    let user_data = format!(
        r#"#cloud-config
disable_root: false
ssh_authorized_keys:
  - {public}
write_files:
  - path: /etc/ssh/sshd_config.d/cairn-test.conf
    content: |
      Port {port}
      ListenAddress 127.0.0.1
      PermitRootLogin prohibit-password
      PasswordAuthentication no
runcmd:
  - [systemctl, enable, --now, ssh]
"#,
        public = public.trim()
    );
    let name = format!("cairn-ansible-{}", std::process::id());
    let vm = Vm::boot(&name, &vm_image(), &name, &user_data).unwrap();
    vm.cloud_init_wait().unwrap();

    let inventory = tmp.path().join("inventory.ini");
    std::fs::write(
        &inventory,
        format!(
            "[cairn_agents]\n{} ansible_host=127.0.0.1 ansible_port={port} ansible_user=root \
             ansible_become=false ansible_ssh_private_key_file={} \
             ansible_python_interpreter=/usr/bin/python3\n",
            vm.hostname,
            key.display()
        ),
    )
    .unwrap();
    let vars = tmp.path().join("vars.json");
    std::fs::write(
        &vars,
        serde_json::json!({
            "docker_host_install_engine": false,
            "cairn_agent_deb_src": debs.agent,
            "cairn_agent_controller": ctl.link.to_string(),
            "cairn_agent_join_token": token,
            "cairn_agent_ca_sha256": ctl.ca_sha256,
            "cairn_agent_labels": {"via": "ansible"},
        })
        .to_string(),
    )
    .unwrap();
    // No user or machine configuration: an empty one.
    let config = tmp.path().join("ansible.cfg");
    std::fs::write(&config, "[defaults]\n").unwrap();
    let playbook = |run: &str| -> (String, Duration) {
        let started = Instant::now();
        let out = Command::new("ansible-playbook")
            .arg("-i")
            .arg(&inventory)
            .arg(ansible_dir().join("site.yml"))
            .args(["--limit", "cairn_agents", "-e"])
            .arg(format!("@{}", vars.display()))
            .env("ANSIBLE_CONFIG", &config)
            // A fresh host key in every VM.
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env(
                "ANSIBLE_SSH_ARGS",
                "-o UserKnownHostsFile=/dev/null -o ControlMaster=auto -o ControlPersist=30s",
            )
            .env("ANSIBLE_LOCAL_TEMP", tmp.path().join("ansible-tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run ansible-playbook");
        let took = started.elapsed();
        let said = text(&out);
        assert!(
            out.status.success(),
            "ansible-playbook ({run}) failed ({}):\n{said}\n--- cairn-agent journal ---\n{}",
            out.status,
            vm.journal("cairn-agent")
        );
        (said, took)
    };

    let (first, took) = playbook("first run");
    eprintln!("measure: first ansible-playbook run took {took:.1?}");
    let counts = recap(&first, &vm.hostname);
    assert_eq!(count(&counts, "failed"), 0, "{first}");
    assert_eq!(count(&counts, "unreachable"), 0, "{first}");
    // Package copied and installed, host enrolled, agent started.
    assert!(count(&counts, "changed") >= 4, "{first}");
    // The engine was not installed (the role was told not to), yet it answers.
    for (task, result) in [
        ("docker_host : Install the engine's packages", "skipping:"),
        ("docker_host : Check that the Docker Engine answers", "ok:"),
        ("cairn_agent : Join the controller", "changed:"),
        ("cairn_agent : Enable and start cairn-agent", "changed:"),
    ] {
        assert!(
            task_result(&first, task).starts_with(result),
            "{task}: {}\n{first}",
            task_result(&first, task)
        );
    }

    // Enrolled and linked: the controller lists the VM, active, with its label.
    let hosts = ctl.hosts().await;
    let listed: Vec<_> = hosts
        .iter()
        .filter(|h| h["hostname"] == vm.hostname.as_str())
        .collect();
    assert_eq!(listed.len(), 1, "{hosts:#?}");
    let id = listed[0]["id"].as_str().unwrap().to_string();
    assert_eq!(ctl.host_state(&id).await, "active");
    assert_eq!(listed[0]["labels"]["via"], "ansible", "{:#}", listed[0]);
    assert_eq!(
        vm.exec_ok(&["systemctl", "is-active", "cairn-agent"])
            .unwrap(),
        "active"
    );
    assert_eq!(
        vm.exec_ok(&["systemctl", "is-enabled", "cairn-agent"])
            .unwrap(),
        "enabled"
    );
    let pid = vm
        .exec_ok(&[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "cairn-agent",
        ])
        .unwrap();

    // Idempotent: nothing changes, not even the agent's process; the spent token
    // is not needed again.
    let (second, took) = playbook("second run");
    eprintln!("measure: second ansible-playbook run took {took:.1?}");
    let counts = recap(&second, &vm.hostname);
    assert_eq!(count(&counts, "changed"), 0, "{second}");
    assert!(
        task_result(&second, "cairn_agent : Join the controller").starts_with("skipping:"),
        "{second}"
    );
    assert_eq!(count(&counts, "failed"), 0, "{second}");
    assert_eq!(
        vm.exec_ok(&[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "cairn-agent"
        ])
        .unwrap(),
        pid,
        "the second run restarted the agent"
    );
    let hosts = ctl.hosts().await;
    assert_eq!(
        hosts
            .iter()
            .filter(|h| h["hostname"] == vm.hostname.as_str())
            .count(),
        1,
        "{hosts:#?}"
    );
    assert_eq!(ctl.host_state(&id).await, "active");
}
