//! Controllers and agents as real processes on loopback, for end-to-end tests.
//!
//! Each process writes its log to a file in the test's temporary directory; when a
//! test panics, the logs are printed so CI output shows what the programs said.
//! Every child is killed (SIGKILL) when its handle is dropped, so a failing test
//! leaves nothing running.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found; build the binaries first: cargo build --workspace --bins",
        p.display()
    );
    p
}

/// A started controller (default options) with one started agent called
/// `agent_name`, its host `active`. Returns both and the host id.
pub async fn controller_with_agent(root: &Path, agent_name: &str) -> (Controller, Agent, String) {
    controller_with_agent_using(root, &ControllerOptions::default(), agent_name).await
}

/// [`controller_with_agent`] with the given controller settings.
pub async fn controller_with_agent_using(
    root: &Path,
    opts: &ControllerOptions,
    agent_name: &str,
) -> (Controller, Agent, String) {
    let mut ctl = Controller::init(root, opts);
    ctl.start().await;
    let agent = start_agent(&ctl, root, agent_name).await;
    let host = agent.host_id();
    (ctl, agent, host)
}

/// Enrols and starts one more agent on `ctl`; returns once its host is `active`.
pub async fn start_agent(ctl: &Controller, root: &Path, name: &str) -> Agent {
    let mut agent = Agent::new(root, name);
    let host = agent.join_ok(ctl, &ctl.token("5m", 1), &[]);
    agent.start();
    ctl.wait_host_state(&host, "active", Duration::from_secs(20))
        .await;
    agent
}

/// [`start_agent`] with a `KEY=VALUE` label (blueprints pin instances to it).
pub async fn start_agent_labelled(ctl: &Controller, root: &Path, name: &str, label: &str) -> Agent {
    let mut agent = Agent::new(root, name);
    let host = agent.join_ok(ctl, &ctl.token("5m", 1), &["--label", label]);
    agent.start();
    ctl.wait_host_state(&host, "active", Duration::from_secs(20))
        .await;
    agent
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.env(
        "RUST_LOG",
        std::env::var("CAIRN_TEST_LOG").unwrap_or_else(|_| "info".into()),
    );
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();
    }
}

/// A controller process and its data directory.
pub struct Controller {
    pub dir: PathBuf,
    pub api: String,
    pub link: SocketAddr,
    pub admin_token: String,
    pub ca_sha256: String,
    log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
    /// The etcd holding this controller's state, when it is on etcd; dropped after the
    /// controller (fields drop in order, and `Drop` kills the controller first).
    pub etcd: Option<crate::etcd::Etcd>,
}

/// Settings for [`Controller::init`].
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub heartbeat: &'static str,
    pub missed: u32,
    pub lost_after: &'static str,
    pub agent_cert_ttl: &'static str,
    /// `init --web-tls`: `http` (loopback), or `https` with the certificate `init`
    /// makes, which this handle's HTTP client then trusts through the Cairn CA.
    pub web_tls: &'static str,
    /// Keep the state on an etcd of its own (`init --store-engine etcd`) instead of
    /// sled; the default comes from `CAIRN_TEST_STORE` ([`crate::etcd::STORE_VAR`]).
    pub etcd: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            heartbeat: "500ms",
            missed: 3,
            lost_after: "60s",
            agent_cert_ttl: "30d",
            web_tls: "http",
            etcd: crate::etcd::store_from_env(),
        }
    }
}

impl Controller {
    /// Runs `cairn-controller init` in `root/controller`.
    pub fn init(root: &Path, opts: &ControllerOptions) -> Self {
        let dir = root.join("controller");
        let etcd = opts.etcd.then(|| {
            assert!(
                crate::require::find_program("etcd").is_some(),
                "{}=etcd needs the etcd binary: apt-get install etcd-server",
                crate::etcd::STORE_VAR
            );
            crate::etcd::Etcd::start(&root.join("etcd"))
        });
        let api_port = free_tcp_port();
        let link_port = free_udp_port();
        let out = Command::new(bin("cairn-controller"))
            .args(["init", "--data-dir"])
            .arg(&dir)
            .args(["--server-name", "localhost", "--server-name", "127.0.0.1"])
            .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
            .args(["--link-listen", &format!("127.0.0.1:{link_port}")])
            .args([
                "--heartbeat-interval",
                opts.heartbeat,
                "--missed-heartbeats",
                &opts.missed.to_string(),
            ])
            .args([
                "--lost-after",
                opts.lost_after,
                "--agent-cert-ttl",
                opts.agent_cert_ttl,
            ])
            .args(["--web-tls", opts.web_tls])
            .args(etcd.iter().flat_map(|e| {
                [
                    "--store-engine",
                    "etcd",
                    "--etcd-endpoint",
                    e.url.as_str(),
                    "--etcd-prefix",
                    "/cairn-test/",
                ]
            }))
            .output()
            .expect("run init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let ca_sha256 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("CA fingerprint: "))
            .expect("fingerprint in init output")
            .trim()
            .to_string();
        let admin_token = std::fs::read_to_string(dir.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_string();
        let https = opts.web_tls == "https";
        let http = Self::client(&dir, https);
        Controller {
            log: root.join("controller.log"),
            dir,
            api: format!(
                "{}://127.0.0.1:{api_port}",
                if https { "https" } else { "http" }
            ),
            link: SocketAddr::from(([127, 0, 0, 1], link_port)),
            admin_token,
            ca_sha256,
            child: None,
            http,
            etcd,
        }
    }

    /// An HTTP client for the API; for HTTPS, one that trusts the Cairn CA.
    fn client(dir: &Path, https: bool) -> reqwest::Client {
        if !https {
            return reqwest::Client::new();
        }
        let pem = std::fs::read(dir.join("ca.crt")).expect("the Cairn CA certificate");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
            .build()
            .expect("an HTTPS client")
    }

    /// Starts `cairn-controller run` and waits until `/healthz` answers.
    pub async fn start(&mut self) {
        self.start_with_env(&[]).await;
    }

    /// [`Controller::start`] with extra environment variables.
    pub async fn start_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        assert!(self.child.is_none(), "controller already running");
        let mut cmd = Command::new(bin("cairn-controller"));
        cmd.args(["run", "--data-dir"]).arg(&self.dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(spawn_logged(cmd, &self.log));
        let http = self.http.clone();
        let url = format!("{}/healthz", self.api);
        wait_for("controller /healthz", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .await;
        if self.etcd.is_some() {
            // A run on etcd must really be on etcd, not quietly on sled.
            assert!(
                self.log_text().contains("etcd store loaded"),
                "the controller did not open its etcd store:\n{}",
                self.log_text()
            );
        }
    }

    /// Closes the HTTP connections this handle keeps open to the controller, for
    /// tests that count the controller's connections.
    pub fn drop_idle_connections(&mut self) {
        self.http = Self::client(&self.dir, self.api.starts_with("https:"));
    }

    /// Sets `key = value` in the controller's `config.toml` (the line `init`
    /// wrote); takes effect at the next start.
    pub fn set_config(&self, key: &str, value: &str) {
        let path = self.dir.join("config.toml");
        let text = std::fs::read_to_string(&path).expect("read config.toml");
        let prefix = format!("{key} = ");
        assert!(
            text.lines().any(|l| l.starts_with(&prefix)),
            "no {key} in config.toml"
        );
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with(&prefix) {
                    format!("{prefix}{value}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&path, text.join("\n") + "\n").expect("write config.toml");
    }

    /// Appends `toml` (whole tables, e.g. `[auth.oidc]`) to the controller's
    /// `config.toml`; takes effect at the next start.
    pub fn append_config(&self, toml: &str) {
        let path = self.dir.join("config.toml");
        let mut text = std::fs::read_to_string(&path).expect("read config.toml");
        text.push('\n');
        text.push_str(toml);
        std::fs::write(&path, text).expect("write config.toml");
    }

    /// `kill -9` the controller.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("controller running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().expect("wait")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs a `cairn-controller` subcommand against this data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("cairn-controller"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .output()
            .expect("run cairn-controller")
    }

    /// Runs the user's `cairn` CLI as the holder of `token` (none: logged out),
    /// with `stdin` as its standard input, and no config file of anyone's.
    pub fn cairn_as(&self, token: Option<&str>, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(bin("cairn"));
        cmd.args(args)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("CAIRN_TOKEN")
            .env("CAIRN_URL", &self.api)
            .env("CAIRN_CONFIG", self.dir.join("no-cli-config.toml"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("CAIRN_TOKEN", t);
        }
        let mut child = cmd.spawn().expect("run cairn");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("wait for cairn")
    }

    /// Creates a join token through the CLI (which goes through the API while the
    /// controller runs).
    pub fn token(&self, ttl: &str, uses: u32) -> String {
        let out = self.cli(&[
            "token",
            "create",
            "--ttl",
            ttl,
            "--uses",
            &uses.to_string(),
            "--quiet",
        ]);
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// GET an API path with the admin token; returns status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_with(path, Some(&self.admin_token)).await
    }

    pub async fn get_with(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.api));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("API request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Sends `method path` with an optional JSON body and the admin token; returns
    /// status and JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.request(Some(&self.admin_token), method, path, body)
            .await
    }

    /// Sends a request with the given bearer token (or none).
    pub async fn request(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("API request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Creates a user with the admin token and logs in; returns the user's API token.
    pub async fn user(&self, name: &str, role: &str) -> String {
        let password = format!("{name}-password-1");
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/api/v1/users",
                Some(serde_json::json!({"name": name, "password": password, "role": role})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        self.login(name, &password).await.expect("login")
    }

    /// Logs in; returns the token, or the error body.
    pub async fn login(&self, name: &str, password: &str) -> Result<String, Value> {
        let (status, body) = self
            .request(
                None,
                reqwest::Method::POST,
                "/api/v1/login",
                Some(serde_json::json!({"user": name, "password": password})),
            )
            .await;
        if status == 200 {
            Ok(body["token"].as_str().expect("token").to_string())
        } else {
            Err(body)
        }
    }

    /// Creates a blueprint with the admin token; panics unless it is created.
    pub async fn blueprint(&self, spec: Value) -> Value {
        let (status, body) = self
            .send(reqwest::Method::POST, "/api/v1/blueprints", Some(spec))
            .await;
        assert_eq!(status, 201, "creating a blueprint: {body}");
        body
    }

    /// Waits until instance `id` is in `state` (panics on an unexpected `failed`).
    pub async fn wait_instance(
        &self,
        token: &str,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> Value {
        let body = self
            .wait_instance_any(token, id, &[state, "failed"], timeout)
            .await;
        if body["state"] == "failed" && state != "failed" {
            panic!("instance {id} failed: {body:#}");
        }
        body
    }

    /// Waits until instance `id` is in one of `states`; returns its view.
    pub async fn wait_instance_any(
        &self,
        token: &str,
        id: &str,
        states: &[&str],
        timeout: Duration,
    ) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < timeout {
            let body = self.instance(token, id).await;
            if states.iter().any(|s| body["state"] == *s) {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("instance {id} not in {states:?} after {timeout:?}: {last:#}");
    }

    /// Launches `blueprint` as the holder of `token`; returns the instance id.
    pub async fn launch(&self, token: &str, blueprint: &str) -> String {
        let (status, body) = self
            .request(
                Some(token),
                reqwest::Method::POST,
                "/api/v1/instances",
                Some(serde_json::json!({ "blueprint": blueprint })),
            )
            .await;
        assert_eq!(status, 201, "launch {blueprint}: {body}");
        body["id"].as_str().expect("instance id").to_string()
    }

    /// Instance `id` as the holder of `token` sees it.
    pub async fn instance(&self, token: &str, id: &str) -> Value {
        self.request(
            Some(token),
            reqwest::Method::GET,
            &format!("/api/v1/instances/{id}"),
            None,
        )
        .await
        .1
    }

    /// Stops instance `id` as the holder of `token` and waits until it is `stopped`.
    pub async fn stop_instance(&self, token: &str, id: &str, timeout: Duration) {
        let (status, body) = self
            .request(
                Some(token),
                reqwest::Method::DELETE,
                &format!("/api/v1/instances/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 202, "stop {id}: {body}");
        self.wait_instance(token, id, "stopped", timeout).await;
    }

    /// The digest references (`REPO@sha256:…`) of the images host `id` reports.
    pub async fn host_image_digests(&self, id: &str) -> Vec<String> {
        let (_, h) = self.get(&format!("/api/v1/hosts/{id}")).await;
        h["runtime"]["Docker"]["images"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["repo_digests"].as_array().cloned().unwrap_or_default())
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect()
    }

    /// The hosts as the API lists them.
    pub async fn hosts(&self) -> Vec<Value> {
        let (status, body) = self.get("/api/v1/hosts").await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().unwrap_or_default()
    }

    /// The state of one host.
    pub async fn host_state(&self, id: &str) -> String {
        let (status, body) = self.get(&format!("/api/v1/hosts/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body["state"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until host `id` is in `state`; returns how long that took.
    pub async fn wait_host_state(&self, id: &str, state: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.host_state(id).await == state {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                let (_, body) = self.get(&format!("/api/v1/hosts/{id}")).await;
                panic!("host {id} not {state} after {timeout:?}: {body:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- controller log ({}) -----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        kill9(&mut self.child);
    }
}

/// An agent process and its state directory.
pub struct Agent {
    pub name: String,
    pub state_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    pub fn new(root: &Path, name: &str) -> Self {
        Agent {
            name: name.into(),
            state_dir: root.join(format!("agent-{name}")),
            log: root.join(format!("agent-{name}.log")),
            child: None,
        }
    }

    /// Runs `cairn-agent join` and returns its output (success or not).
    pub fn join(
        &self,
        controller: &Controller,
        token: &str,
        ca_sha256: &str,
        extra: &[&str],
    ) -> Output {
        Command::new(bin("cairn-agent"))
            .args([
                "join",
                "--controller",
                &controller.link.to_string(),
                "--token",
                token,
                "--ca-sha256",
                ca_sha256,
            ])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--hostname", &self.name])
            .args(extra)
            .output()
            .expect("run cairn-agent join")
    }

    /// Joins and asserts success; returns the host id.
    pub fn join_ok(&self, controller: &Controller, token: &str, extra: &[&str]) -> String {
        let out = self.join(controller, token, &controller.ca_sha256, extra);
        assert!(
            out.status.success(),
            "join failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.host_id()
    }

    /// The host id from the state directory.
    pub fn host_id(&self) -> String {
        let text = std::fs::read_to_string(self.state_dir.join("agent.toml")).expect("agent.toml");
        text.lines()
            .find_map(|l| l.strip_prefix("host_id = "))
            .map(|v| v.trim().trim_matches('"').to_string())
            .expect("host_id in agent.toml")
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts `cairn-agent run` with extra environment variables (a `PATH` with a
    /// failing `iptables` first, say).
    pub fn start_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        assert!(self.child.is_none(), "agent already running");
        let mut cmd = Command::new(bin("cairn-agent"));
        cmd.args(["run", "--state-dir"]).arg(&self.state_dir);
        cmd.envs(env.iter().copied());
        self.child = Some(spawn_logged(cmd, &self.log));
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited, and with what status.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- agent {} log -----\n{}", self.name, self.log_text());
        }
        kill9(&mut self.child);
    }
}

/// Polls `check` every 50 ms until it returns true; panics after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// stderr of a finished command as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
