//! Hosts that create themselves, against a real Nova (Keystone, Glance, Placement,
//! Neutron server and Nova with the fake virt driver, from Debian's packages in a
//! container the harness builds): the controller's OpenStack provider creates
//! servers with generated cloud-init user-data; the harness plays the hypervisor
//! and boots a systemd + cloud-init "VM" container for each with the user-data Nova
//! holds, so the package really installs (bootstrap mode, fetched from the
//! controller over HTTPS and checked by hash) or is already there (bake mode), the
//! unit really starts and the agent really enrols.
//!
//! One controller, three pools at once:
//! * `default` (bootstrap, `min_hosts = 2`): two servers become `active` hosts,
//!   instances run on them, a burst beyond their room makes the autoscaler create a
//!   third, and once idle the third is drained, removed, and its server deleted in
//!   Nova;
//! * `baked` (bake, `min_hosts = 1`): a host from an image with the package;
//! * `doomed` (bake): the hypervisor boots its server with a wrong join token (as
//!   if the user-data were bad), so it never joins: at the deadline it is deleted in
//!   Nova, counted as the pool's failure with the console log's end, and its join
//!   token revoked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::any::Any;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use cairn_tests::cluster::{wait_for, Controller, ControllerOptions};
use cairn_tests::debs::debs;
use cairn_tests::docker::InstanceContainers;
use cairn_tests::images::busybox_image;
use cairn_tests::openstack::{Hypervisor, OpenStack, Server};
use cairn_tests::require::{require, Need};
use cairn_tests::vm::{vm_image, vm_image_with_agent, Vm};

const WAIT: Duration = Duration::from_secs(240);

async fn autoscaler(ctl: &Controller) -> Value {
    let (status, body) = ctl.get("/api/v1/autoscaler").await;
    assert_eq!(status, 200, "{body:#}");
    body
}

/// The servers of `pool` in `GET /api/v1/autoscaler`.
async fn servers(ctl: &Controller, pool: &str) -> Vec<Value> {
    autoscaler(ctl).await["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pool"] == pool)
        .cloned()
        .collect()
}

/// Active hosts of `pool`, by id.
async fn active_hosts(ctl: &Controller, pool: &str) -> Vec<Value> {
    ctl.hosts()
        .await
        .into_iter()
        .filter(|h| h["labels"]["pool"] == pool && h["state"] == "active" && h["connected"] == true)
        .collect()
}

fn whole_host(image: &str) -> Value {
    // Two CPUs: a whole host of this machine, so each host takes one.
    json!({
        "name": "whole", "image": image, "pull": "never", "app": "http", "app_port": 8080,
        "memory_mib": 32, "cpus": 2.0, "max_instances_per_user": 10,
        "placement": { "pool": "default" },
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openstack_pools_create_bootstrap_scale_and_delete_hosts() {
    if !require(&[Need::Docker, Need::OpenStack, Need::CargoDeb]) {
        return;
    }
    let image = busybox_image();
    let debs = debs();
    let plain = vm_image();
    let baked = vm_image_with_agent(&debs.agent);
    let os = OpenStack::start().await.expect("the mini OpenStack starts");

    let tmp = tempfile::tempdir().unwrap();
    // clouds.yaml where every OpenStack tool looks: ~/.config/openstack/.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".config/openstack")).unwrap();
    std::fs::write(home.join(".config/openstack/clouds.yaml"), os.clouds_yaml()).unwrap();
    let mut ctl = Controller::init(
        tmp.path(),
        &ControllerOptions {
            web_tls: "https",
            ..Default::default()
        },
    );
    let cfg = ctl.dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("pools = []\n", "");
    let pool = |name: &str, min: u32, max: u32, image: &str, mode: &str, deadline: u64| {
        format!(
            "\n[[pools]]\nname = \"{name}\"\nprovider = \"openstack\"\nmin_hosts = {min}\nmax_hosts = {max}\n\
             headroom_instances = 0\ntypical_memory_mib = 32\ntypical_cpus = 2.0\nidle_cooldown_secs = 5\n\
             allow_unisolated = true\n\
             [pools.openstack]\ncloud = \"cairn-test\"\nflavor = \"{flavor}\"\nimage = \"{image}\"\n\
             network = \"none\"\nmode = \"{mode}\"\njoin_deadline_secs = {deadline}\nname_prefix = \"t-\"\n\
             metadata = {{ course = \"cs101\" }}\n",
            flavor = os.flavor,
        )
    };
    let api_port = ctl.api.rsplit(':').next().unwrap().to_string();
    let config = format!(
        "{text}\n[cloud_hosts]\ncontroller_link = \"{link}\"\npublic_url = \"https://127.0.0.1:{api_port}\"\n\
         agent_package = \"{deb}\"\n{default}{baked}{doomed}",
        link = ctl.link,
        deb = debs.agent.display(),
        default = pool("default", 2, 3, "debian-12-plain", "bootstrap", 300),
        baked = pool("baked", 1, 1, "debian-12-cairn-agent", "bake", 300),
        doomed = pool("doomed", 1, 1, "debian-12-cairn-agent", "bake", 30),
    );
    std::fs::write(&cfg, config).unwrap();
    let started = Instant::now();
    ctl.start_with_env(&[("HOME", home.as_os_str())]).await;

    // The harness's hypervisor: a VM container per ACTIVE server, from the image
    // the server was created with, running the user-data Nova holds.
    let (plain_img, baked_img) = (plain.clone(), baked.clone());
    let hypervisor = Hypervisor::start(
        &os,
        Box::new(
            move |server: &Server| -> anyhow::Result<Box<dyn Any + Send>> {
                let image = match server.image_name.as_str() {
                    "debian-12-plain" => &plain_img,
                    "debian-12-cairn-agent" => &baked_img,
                    other => anyhow::bail!("no VM image for Glance image {other}"),
                };
                let mut user_data = server.user_data.clone().unwrap_or_default();
                if server.name.contains("doomed") {
                    // As if the user-data carried a bad token: the agent is refused.
                    let at = user_data.find("CAIRN_JOIN_TOKEN='").expect("a token line") + 18;
                    user_data.replace_range(at..at + 8, "00000000");
                }
                let vm = Vm::boot(
                    &format!("cairn-vm-{}", &server.id[..8]),
                    image,
                    &server.id,
                    &user_data,
                )?;
                Ok(Box::new(vm))
            },
        ),
    );

    // Two bootstrap servers and a baked one become active hosts.
    wait_for(
        "two active hosts in the default pool and one baked",
        WAIT,
        || async {
            active_hosts(&ctl, "default").await.len() == 2
                && active_hosts(&ctl, "baked").await.len() == 1
        },
    )
    .await;
    let to_active = started.elapsed();
    let nova = os.servers().await.unwrap();
    let mine: Vec<&Server> = nova
        .iter()
        .filter(|s| s.name.starts_with("t-default-"))
        .collect();
    assert_eq!(mine.len(), 2, "{nova:#?}");
    for s in &mine {
        assert_eq!(s.status, "ACTIVE");
        assert_eq!(
            s.metadata.get("cairn-pool").map(String::as_str),
            Some("default")
        );
        assert_eq!(s.metadata.get("course").map(String::as_str), Some("cs101"));
        let ud = s.user_data.as_deref().unwrap();
        assert!(ud.starts_with("#cloud-config\n"), "{ud}");
        assert!(
            ud.contains("CAIRN_PACKAGE_SHA256='"),
            "bootstrap mode names the package"
        );
    }
    // The user-data is what cloud-init accepts.
    let ud = mine[0].user_data.clone().unwrap();
    let check = hypervisor.with_vm(&mine[0].id, |vm: &Vm| {
        vm.sh(&format!(
            "cat > /tmp/ud <<'EOF'\n{ud}EOF\ncloud-init schema --config-file /tmp/ud"
        ))
    });
    assert!(
        check.as_ref().is_ok_and(|o| o.contains("Valid")),
        "{check:?}"
    );
    // The agent's unit is what systemd runs (Type=notify, so active means linked).
    let unit = hypervisor.with_vm(&mine[0].id, |vm: &Vm| {
        vm.sh("systemctl is-active cairn-agent; cat /var/log/cairn-firstboot.log")
    });
    let unit = unit.unwrap();
    assert!(
        unit.starts_with("active\n") && unit.contains("package-installed"),
        "{unit}"
    );
    // Servers in flight show their phases; none shows a secret.
    let view = autoscaler(&ctl).await;
    let text = view.to_string();
    assert!(
        !text.contains("CAIRN_JOIN_TOKEN") && !text.contains("user_data"),
        "{view:#}"
    );
    wait_for("the default pool's servers shown active", WAIT, || async {
        let s = servers(&ctl, "default").await;
        s.len() == 2
            && s.iter()
                .all(|s| s["phase"] == "active" && s["host"].is_string())
    })
    .await;
    // Where the time of each bootstrap host went: Nova (create → ACTIVE), the VM's
    // boot up to cloud-init running the first-boot script, the package install, and
    // enrolment plus the agent's start (its unit is Type=notify).
    let timings = hypervisor.timings();
    let mut split = vec![];
    for s in &mine {
        let t = &timings[&s.id];
        let log = hypervisor
            .with_vm(&s.id, |vm: &Vm| {
                vm.read_file("/var/log/cairn-firstboot.log")
            })
            .unwrap();
        let at = |step: &str| -> f64 {
            log.lines()
                .find_map(|l| l.strip_suffix(&format!(" {step}")))
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no {step} in {log}"))
        };
        let epoch = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        let created = epoch(t.created.unwrap_or(t.active_seen));
        split.push(format!(
            "{}: nova {:.1} s, boot to first-boot script {:.1} s, package {:.1} s, join + agent start {:.1} s, total {:.1} s",
            s.name,
            epoch(t.active_seen) - created,
            at("start") - epoch(t.booted),
            at("package-installed") - at("start"),
            at("agent-active") - at("package-installed"),
            at("agent-active") - created,
        ));
    }
    eprintln!(
        "openstack e2e, bootstrap hosts (user-data {} bytes):\n{}",
        ud.len(),
        split.join("\n")
    );
    let baked_server = servers(&ctl, "baked").await;
    assert_eq!(baked_server.len(), 1, "{baked_server:#?}");
    let baked_host = active_hosts(&ctl, "baked").await[0]["hostname"].clone();
    assert_eq!(
        baked_host, baked_server[0]["name"],
        "the host is named after its server"
    );

    // Instances run on them; a burst beyond their room brings a third server.
    ctl.blueprint(whole_host(&image)).await;
    let alice = ctl.user("alice", "user").await;
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(ctl.launch(&alice, "whole").await);
    }
    let _cleanup = InstanceContainers(ids.clone());
    let burst = Instant::now();
    let mut hosts_used = std::collections::BTreeSet::new();
    for id in &ids {
        let running = ctl.wait_instance(&alice, id, "running", WAIT).await;
        hosts_used.insert(running["host"].as_str().unwrap().to_string());
    }
    let burst_to_running = burst.elapsed();
    assert_eq!(
        hosts_used.len(),
        3,
        "one whole-host instance per host: {hosts_used:?}"
    );
    let decisions = autoscaler(&ctl).await["decisions"].clone();
    let create = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| {
            d["pool"] == "default"
                && d["action"] == "create"
                && d["outcome"] == "ok"
                && d["count"] == 1
        })
        .cloned();
    assert!(
        create.is_some(),
        "a create decision for the burst: {decisions:#}"
    );
    let third: Vec<String> = servers(&ctl, "default")
        .await
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(third.len(), 3);

    // Idle again: one host is drained, removed, and its server deleted in Nova.
    for id in &ids {
        ctl.stop_instance(&alice, id, WAIT).await;
    }
    let removed = wait_for("a default-pool server deleted in Nova", WAIT, || async {
        let left = os.servers().await.unwrap();
        left.iter()
            .filter(|s| s.name.starts_with("t-default-"))
            .count()
            == 2
    })
    .await;
    let decisions = autoscaler(&ctl).await["decisions"].clone();
    let remove = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["pool"] == "default" && d["action"] == "remove")
        .cloned()
        .unwrap_or_else(|| panic!("a remove decision: {decisions:#}"));
    assert_eq!(remove["outcome"], "ok", "{remove:#}");
    let gone_host = remove["host"].as_str().unwrap().to_string();
    wait_for("the removed server's VM stopped", WAIT, || async {
        hypervisor.booted().len()
            == os
                .servers()
                .await
                .unwrap()
                .iter()
                .filter(|s| s.status == "ACTIVE")
                .count()
    })
    .await;
    assert_eq!(servers(&ctl, "default").await.len(), 2);
    let (_, host) = ctl.get(&format!("/api/v1/hosts/{gone_host}")).await;
    assert_eq!(host["pool"]["standing"]["state"], "removed", "{host:#}");

    // The doomed server never joined: deleted at its deadline, counted, token revoked.
    wait_for("the doomed pool's failure recorded", WAIT, || async {
        autoscaler(&ctl).await["providers"]["doomed"]["failures"].as_u64() >= Some(1)
    })
    .await;
    let view = autoscaler(&ctl).await;
    let health = &view["providers"]["doomed"];
    let last = health["last_error"].as_str().unwrap();
    assert!(
        last.contains("agent had not joined after") || last.contains("was not ACTIVE"),
        "{health:#}"
    );
    // Nova's fake driver's console log, as the operator would read it.
    assert!(
        last.contains("console log ends: ") && last.contains("LAST LINE"),
        "{health:#}"
    );
    assert!(
        health["backoff_until_ms"].as_u64().unwrap() > 0,
        "{health:#}"
    );
    let failure = view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["pool"] == "doomed" && d["action"] == "failed")
        .cloned()
        .unwrap_or_else(|| panic!("a failed decision: {view:#}"));
    assert!(
        failure["outcome"].as_str().unwrap().contains("deleted"),
        "{failure:#}"
    );
    // The pool creates again after its back-off, so only the failed server itself
    // is looked for.
    let outcome = failure["outcome"].as_str().unwrap();
    let failed_name = outcome.split_whitespace().nth(1).unwrap().to_string();
    assert!(failed_name.starts_with("t-doomed-"), "{failure:#}");
    let still: Vec<Server> = os
        .servers()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.name == failed_name)
        .collect();
    assert!(
        still.is_empty(),
        "the failed server is deleted in Nova: {still:#?}"
    );
    let (_, tokens) = ctl.get("/api/v1/join-tokens").await;
    let all = tokens.as_array().unwrap();
    assert!(
        all.iter().any(|t| t["description"]
            .as_str()
            .unwrap_or("")
            .contains("(pool default)")),
        "the tokens list names the servers' tokens: {tokens:#}"
    );
    let left: Vec<&Value> = all
        .iter()
        .filter(|t| {
            t["description"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("server {failed_name} "))
        })
        .collect();
    assert!(
        left.is_empty(),
        "the failed server's token is revoked: {left:#?}"
    );
    // The controller's log names every provider call and never a secret.
    let log = ctl.log_text();
    assert!(log.contains("openstack: created server") && log.contains("openstack: delete server"));
    assert!(!log.contains("CAIRN_JOIN_TOKEN"), "a secret in the log");

    // Where the time went (for README; not asserted).
    eprintln!(
        "openstack e2e: controller start → 2+1 hosts active {:.1} s; burst → 3 running {:.1} s; idle → server deleted {:.1} s",
        to_active.as_secs_f64(),
        burst_to_running.as_secs_f64(),
        removed.as_secs_f64(),
    );
    drop(hypervisor);
}
