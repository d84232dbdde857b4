//! Login through a trusted front proxy: Debian's nginx terminates TLS, checks the
//! user's client certificate against a site CA and passes its subject in a header
//! (as StratusLab's nginx did). The controller believes that header only from the
//! proxy's address (nginx connects from 127.0.0.2); the same header sent straight
//! from 127.0.0.1 logs no one in.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use reqwest::redirect::Policy;
use reqwest::StatusCode;

use cairn_tests::cluster::{free_tcp_port, wait_for, Controller, ControllerOptions};
use cairn_tests::require::{nginx_program, require, Need};

/// A site CA, the proxy's server certificate for 127.0.0.1, and client
/// certificates for users, all PEM.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Example University users");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate, key) PEM.
    fn issue(&self, cn: &str, server: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Example University");
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        if server {
            params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// nginx in the foreground, killed on drop.
struct Nginx {
    child: Child,
    url: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    async fn start(dir: &Path, pki: &Pki, upstream: &str) -> Self {
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let (cert, key) = pki.issue("127.0.0.1", true);
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        std::fs::write(dir.join("users-ca.pem"), &pki.ca_pem).unwrap();
        let port = free_tcp_port();
        let d = dir.display();
        let upstream = upstream.trim_start_matches("http://");
        // As a site would write it: TLS with optional client certificates
        // verified against the users' CA, the subject passed on, and any
        // identity header the client sent itself overwritten.
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server.key;
        ssl_client_certificate {d}/users-ca.pem;
        ssl_verify_client optional;
        location / {{
            proxy_pass http://{upstream};
            proxy_bind 127.0.0.2;
            proxy_set_header Host $host;
            proxy_set_header X-SSL-Client-S-DN $ssl_client_s_dn;
        }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx_program().expect("nginx"))
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            child,
            url: format!("https://127.0.0.1:{port}"),
        };
        let addr = format!("127.0.0.1:{port}");
        wait_for("nginx listening", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        nginx
    }
}

fn browser(pki: &Pki, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .redirect(Policy::none())
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}{key}");
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn session_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("cairn_session=") && !c.starts_with("cairn_session=;"))
        .map(|c| c.split(';').next().unwrap().to_string())
}

/// Opens `url` (a login page) with `client`, sending `header` if given, and
/// asserts no session comes of it; returns the status and the page.
async fn no_session(
    client: &reqwest::Client,
    url: &str,
    header: Option<&str>,
) -> (StatusCode, String) {
    let mut req = client.get(url);
    if let Some(h) = header {
        req = req.header("X-SSL-Client-S-DN", h);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    assert!(session_cookie(&resp).is_none(), "{url}: a session was made");
    (status, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_at_the_trusted_proxy_logs_the_user_in_and_a_forged_header_does_not() {
    if !require(&[Need::Nginx]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.append_config(
        r#"[auth.front_proxy]
trusted = ["127.0.0.2"]
header = "X-SSL-Client-S-DN"
format = "x509_subject"
"#,
    );
    ctl.start().await;
    ctl.user("alice", "user").await;
    ctl.user("carol", "user").await;
    let pki = Pki::new();
    let nginx = Nginx::start(&tmp.path().join("nginx"), &pki, &ctl.api).await;

    // Alice's certificate: the login page answers with a session and sends her on.
    let (cert, key) = pki.issue("alice", false);
    let alice = browser(&pki, Some((&cert, &key)));
    let resp = alice
        .get(format!("{}/login?next=/instances", nginx.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/instances");
    let cookie = session_cookie(&resp).expect("a session cookie");
    // The session is Alice's, through the proxy and straight at the controller.
    let me: serde_json::Value = alice
        .get(format!("{}/api/v1/me", nginx.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"], "alice", "{me}");
    let page = reqwest::Client::new()
        .get(format!("{}/instances", ctl.api))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("alice"));

    // The same header sent to the controller from 127.0.0.1, which is not the
    // proxy: ignored, the login form as for anyone.
    let direct = reqwest::Client::builder()
        .no_proxy()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let (status, page) = no_session(
        &direct,
        &format!("{}/login", ctl.api),
        Some("CN=alice,O=Example University"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("name=\"password\""));

    // No certificate: the login form, and a header the client made up itself is
    // replaced by nginx's (empty) one.
    let anonymous = browser(&pki, None);
    let login = format!("{}/login", nginx.url);
    let (status, page) = no_session(&anonymous, &login, Some("CN=alice")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("name=\"password\""));

    // A certificate for a name with no account: refused, saying why; no account
    // is made unless the site asks for it.
    let (cert, key) = pki.issue("mallory", false);
    let (status, body) = no_session(&browser(&pki, Some((&cert, &key))), &login, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("no account of that name"), "{body}");
    let (_, users) = ctl.get("/api/v1/users").await;
    assert!(
        !users.to_string().contains("mallory"),
        "no account made: {users}"
    );

    // A disabled account is refused even with a good certificate.
    let (status, body) = ctl
        .send(reqwest::Method::POST, "/api/v1/users/carol/disable", None)
        .await;
    assert!(status < 300, "{status} {body}");
    let (cert, key) = pki.issue("carol", false);
    let (status, _) = no_session(&browser(&pki, Some((&cert, &key))), &login, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Logging out does not log Alice straight back in: the page after logout
    // is the form, although her certificate is still there.
    let (status, _) = no_session(&alice, &format!("{login}?logged_out=1"), None).await;
    assert_eq!(status, StatusCode::OK);

    // The logins are in the audit log, with the proxy named.
    let (_, audit) = ctl.get("/api/v1/audit").await;
    let text = audit.to_string();
    assert!(text.contains("front proxy X-SSL-Client-S-DN"), "{text}");
}
