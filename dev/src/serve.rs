//! The example app: one web page, served by this binary's hidden `serve-example`
//! subcommand inside the `hello` image.

/// The page every path answers with.
pub const INDEX: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Hello from Cairn</title>
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1b1b1b}
h1{color:#2f5d50}</style></head>
<body><h1>Hello from Cairn</h1>
<p>This page is served by your own container, started from the <code>hello</code> blueprint.</p>
</body></html>
"#;

/// Serves [`INDEX`] on every address of `port` until SIGINT or SIGTERM (as PID 1 in
/// a container, a process without a handler would ignore `docker stop`'s SIGTERM).
pub async fn serve(port: u16) -> std::io::Result<()> {
    let app = axum::Router::new().fallback(|| async { axum::response::Html(INDEX) });
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(cairn_shared::process::shutdown_signal())
        .await
}
