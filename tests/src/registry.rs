//! A real image registry on loopback: Debian's `docker-registry` (the CNCF
//! distribution registry), started by the test, storing into the test's directory.
//!
//! Docker treats registries on 127.0.0.0/8 as insecure (plain HTTP) by default, so
//! `docker push 127.0.0.1:PORT/…` works without any daemon configuration. A registry
//! with a login is the same storage served a second time with an htpasswd file: the
//! test pushes through the open door and Cairn pulls through the locked one, so no
//! test ever writes `docker login` into the machine's Docker configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::free_tcp_port;
use crate::docker::docker;
use crate::require::{find_program, REGISTRY};

/// A running registry process.
pub struct Registry {
    pub addr: SocketAddr,
    /// The `docker-registry` program.
    bin: PathBuf,
    dir: PathBuf,
    storage: PathBuf,
    login: Option<(String, String)>,
    child: Option<Child>,
    name: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("login", &self.login.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An open registry storing under `root/NAME`.
    pub fn start(root: &Path, name: &str) -> Self {
        let storage = root.join(name).join("storage");
        Self::launch(root, name, storage, None)
    }

    /// A registry that requires `user`/`password` (HTTP basic auth, htpasswd), over
    /// the storage of `open` — push through `open`, pull through this one.
    pub fn with_login(
        root: &Path,
        name: &str,
        open: &Registry,
        user: &str,
        password: &str,
    ) -> Self {
        Self::launch(
            root,
            name,
            open.storage.clone(),
            Some((user.to_string(), password.to_string())),
        )
    }

    fn launch(root: &Path, name: &str, storage: PathBuf, login: Option<(String, String)>) -> Self {
        // Tests check with `require(&[Need::Registry])` first.
        let bin = find_program(REGISTRY).unwrap_or_else(|| {
            panic!("{REGISTRY} is not on PATH: apt-get install docker-registry")
        });
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("registry dir");
        std::fs::create_dir_all(&storage).expect("registry storage dir");
        let port = free_tcp_port();
        let mut r = Registry {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            bin,
            dir,
            storage,
            login,
            child: None,
            name: name.to_string(),
        };
        r.write_config();
        r.restart();
        r
    }

    fn write_config(&self) {
        let auth = match &self.login {
            None => String::new(),
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let htpasswd = self.dir.join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: cairn-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n{auth}",
            self.storage.display(),
            self.addr
        );
        std::fs::write(self.dir.join("config.yml"), config).expect("registry config");
    }

    /// `127.0.0.1:PORT`, as written in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the registry (a "registry down" outage). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same address and storage; waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.name)))
            .expect("registry log");
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "docker-registry exited with {status}: {}",
                    std::fs::read_to_string(self.dir.join(format!("{}.log", self.name)))
                        .unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Tags local image `local` as `HOST/repo_tag` and pushes it; returns the
    /// manifest digest (`sha256:…`) the registry now serves for that tag.
    pub fn push(&self, local: &str, repo_tag: &str) -> String {
        assert!(self.login.is_none(), "push through the open registry");
        let remote = format!("{}/{repo_tag}", self.host());
        docker(&["tag", local, &remote]);
        let out = docker(&["push", &remote]);
        // The last line reads "TAG: digest: sha256:… size: N".
        let digest = out
            .lines()
            .filter_map(|l| l.split("digest: ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .next_back()
            .unwrap_or_else(|| panic!("no digest in docker push output: {out}"))
            .to_string();
        // The pushed tag stays on the machine's Docker otherwise, and tests that
        // want the host to lack the image would find it present.
        docker(&["rmi", &remote]);
        digest
    }
}

impl Registry {
    /// [`Registry::push`], then removes the local image too, so this machine's Docker
    /// holds it only once an agent pulls it.
    pub fn publish(&self, local: &str, repo_tag: &str) -> String {
        let digest = self.push(local, repo_tag);
        docker(&["rmi", local]);
        digest
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The port [`unique_http_image`]s serve on (busybox `httpd`).
pub const HTTP_PORT: u16 = 8080;

/// Builds a new image `tag` that no other image shares layers with: busybox, a file
/// of `padding_bytes` random (incompressible) bytes, and busybox `httpd` on
/// [`HTTP_PORT`] as its command. Any earlier image of that tag is replaced. Use it
/// for images that go through a registry, so that removing the pulled copy really
/// leaves the host without them.
pub fn unique_http_image(tag: &str, padding_bytes: usize) -> String {
    use rand::RngCore;
    let root = tempfile::tempdir().expect("temporary root fs");
    crate::images::busybox_rootfs(root.path());
    let mut padding = vec![0u8; padding_bytes.max(64)];
    rand::rng().fill_bytes(&mut padding);
    std::fs::write(root.path().join("padding.bin"), &padding).expect("write padding");
    std::fs::create_dir_all(root.path().join("www")).expect("www");
    std::fs::write(root.path().join("www/index.html"), tag).expect("index");
    let _ = Command::new("docker")
        .args(["rmi", "-f", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    crate::images::import(
        root.path(),
        tag,
        &[format!(
            r#"CMD ["/bin/httpd", "-f", "-p", "{HTTP_PORT}", "-h", "/www"]"#
        )],
    );
    tag.to_string()
}

/// Removes every local image whose references start with `HOST/` (pulled copies of
/// a test registry's images), so a test starts from a host that has never seen them.
pub fn forget_pulled(host: &str) {
    let out = docker(&[
        "image",
        "ls",
        "--digests",
        "--format",
        "{{.Repository}} {{.ID}}",
    ]);
    let prefix = format!("{host}/");
    let mut ids: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let _ = Command::new("docker")
            .args(["rmi", "-f", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
