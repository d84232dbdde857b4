//! The HTTP listener over TLS: a controller initialised with `--web-tls https` serves
//! its API, UI and proxy over HTTPS with the certificate `init` made, which a client
//! trusting the Cairn CA accepts for the configured server name; plain HTTP to the
//! same port gets nothing useful.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use cairn_controller::config::DataDir;
use cairn_controller::pki::{self, InitOptions, WebTls};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get_over_tls(addr: std::net::SocketAddr, ca_der: Vec<u8>, path: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der)).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(cairn_shared::identity::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("cairn.test").unwrap(), tcp)
        .await
        .expect("TLS handshake with the init certificate");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: cairn.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_init_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let out = pki::init(
        &dir,
        &InitOptions {
            server_names: vec!["cairn.test".into()],
            api_listen: "127.0.0.1:0".parse().unwrap(),
            web: WebTls::InitCert,
            link_listen: "127.0.0.1:0".parse().unwrap(),
            hosts: Default::default(),
            agent_cert_ttl: Duration::from_secs(3600),
            force: false,
            store: Default::default(),
        },
    )
    .unwrap();
    assert!(out.config.api.serves_https());
    let running = cairn_controller::app::start(dir.clone()).await.unwrap();
    let ca_der = running.app.ca_cert_der().to_vec();

    let resp = get_over_tls(running.api_addr, ca_der.clone(), "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"status\":\"ok\""), "{resp}");
    let resp = get_over_tls(running.api_addr, ca_der, "/login").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("<form"), "{resp}");

    // Plain HTTP to the TLS port is not served.
    let mut tcp = tokio::net::TcpStream::connect(running.api_addr)
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("\"status\":\"ok\""));
    running.stop().await;
}
