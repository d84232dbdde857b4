//! A real etcd server (Debian's `etcd-server`) on loopback, for the etcd store engine:
//! one single-member cluster per handle, in its own data directory, stopped on drop.
//!
//! Tests that run the controller on etcd either start one here directly or set
//! `CAIRN_TEST_STORE=etcd`, which makes every [`crate::cluster::Controller`] start one
//! of its own (see [`store_from_env`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::free_tcp_port;

/// The variable that puts every test controller's state on etcd: `sled` (default) or
/// `etcd`.
pub const STORE_VAR: &str = "CAIRN_TEST_STORE";

/// Whether `CAIRN_TEST_STORE` asks for etcd; panics on a value it does not know.
pub fn store_from_env() -> bool {
    match std::env::var(STORE_VAR).as_deref() {
        Err(_) | Ok("") | Ok("sled") => false,
        Ok("etcd") => true,
        Ok(other) => panic!("{STORE_VAR}={other:?}: expected sled or etcd"),
    }
}

/// TLS files for a server that requires client certificates.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A running etcd.
pub struct Etcd {
    /// `http://127.0.0.1:PORT` (or `https://` with TLS).
    pub url: String,
    pub tls: Option<EtcdTls>,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts a plain-HTTP etcd with its data under `dir`.
    pub fn start(dir: &Path) -> Etcd {
        Self::launch(dir, false)
    }

    /// Starts an etcd that serves TLS and requires a client certificate, both signed by
    /// a CA made for the test.
    pub fn start_tls(dir: &Path) -> Etcd {
        Self::launch(dir, true)
    }

    fn launch(dir: &Path, tls: bool) -> Etcd {
        std::fs::create_dir_all(dir).expect("etcd dir");
        let (client, peer) = (free_tcp_port(), free_tcp_port());
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .args(["--log-level", "warn"])
            // As a site should run it: old revisions compacted away, so a busy
            // controller's history does not fill the backend.
            .args(["--auto-compaction-mode", "revision"])
            .args(["--auto-compaction-retention", "10000"])
            .args(["--quota-backend-bytes", &(4u64 << 30).to_string()]);
        let files = tls.then(|| make_tls(dir));
        if let Some(f) = &files {
            cmd.arg("--cert-file")
                .arg(dir.join("server.crt"))
                .arg("--key-file")
                .arg(dir.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(&f.ca)
                .arg("--client-cert-auth");
        }
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcd (apt-get install etcd-server): {e}"));
        let mut etcd = Etcd {
            url,
            tls: files,
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        etcd.wait_ready(client);
        etcd
    }

    /// Waits until the client port accepts connections and, for plain HTTP, `/health`
    /// says true.
    fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status}: {}", self.log());
            }
            if self.healthy(port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self, port: u16) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        if self.tls.is_some() {
            // The TLS port accepting connections is enough: etcd binds it once serving.
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// `[store]` for a controller on this etcd, under `prefix`.
    pub fn store_toml(&self, prefix: &str) -> String {
        let mut t = format!(
            "[store]\nengine = \"etcd\"\n\n[store.etcd]\nendpoints = [\"{}\"]\nprefix = \"{prefix}\"\n",
            self.url
        );
        if let Some(tls) = &self.tls {
            t.push_str(&format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                tls.ca.display(),
                tls.client_cert.display(),
                tls.client_key.display()
            ));
        }
        t
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_tls(dir: &Path) -> EtcdTls {
    use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(vec![]).expect("CA params");
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "etcd test CA");
    let ca_pem = ca_params.self_signed(&ca_key).expect("CA cert").pem();
    let ca = Issuer::new(ca_params, ca_key);
    let issue = |name: &str, san: Vec<SanType>| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![]).expect("params");
        p.subject_alt_names = san;
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.signed_by(&key, &ca).expect("cert");
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = issue(
        "etcd",
        vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().expect("dns name")),
        ],
    );
    let (client, client_key) = issue("cairn-controller", vec![]);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write TLS file");
        p
    };
    write("server.crt", &server);
    write("server.key", &server_key);
    EtcdTls {
        ca: write("ca.crt", &ca_pem),
        client_cert: write("client.crt", &client),
        client_key: write("client.key", &client_key),
    }
}
