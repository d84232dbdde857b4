//! The app the proxy tests and benchmarks run inside containers: a small HTTP/1.1
//! server with the endpoints they need.
//!
//! * `GET /` — an HTML page ("Cairn test app").
//! * `GET /small` — two bytes, for request-rate measurements.
//! * `GET /headers` — the request's method, path and headers as JSON.
//! * `GET /bytes?n=N` — N bytes of a known pattern (byte i = i mod 251), streamed.
//! * `POST /sink` — reads the body, checks the pattern, answers `{"bytes":N,"ok":true}`.
//! * `POST /echo` — the body back, streamed.
//! * `GET /ws` — a WebSocket echo.
//!
//! It listens on `0.0.0.0:$PORT` (default 8080) and streams everything, so its memory
//! stays flat whatever the body size.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, std::io::Error>;

const CHUNK: usize = 64 * 1024;

fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    (0..len)
        .map(|i| ((offset + i as u64) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn full(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    if let Ok(v) = kind.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => full(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<!doctype html><html><head><title>Cairn test app</title></head>\
             <body><h1 id=\"hello\">Hello from the Cairn test app</h1></body></html>",
        ),
        (Method::GET, "/small") => full(StatusCode::OK, "text/plain", "ok"),
        (Method::GET, "/headers") => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "method": req.method().as_str(),
                "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "headers": headers,
            });
            full(StatusCode::OK, "application/json", body.to_string())
        }
        (Method::GET, "/bytes") => {
            let n: u64 = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("n=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let stream = futures::stream::unfold(0u64, move |off| async move {
                if off >= n {
                    return None;
                }
                let len = (n - off).min(CHUNK as u64) as usize;
                Some((
                    Ok::<_, std::io::Error>(Frame::data(pattern_chunk(off, len))),
                    off + len as u64,
                ))
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            if let Ok(v) = n.to_string().parse() {
                r.headers_mut().insert(hyper::header::CONTENT_LENGTH, v);
            }
            r
        }
        (Method::POST, "/sink") => {
            let mut body = req.into_body();
            let mut n = 0u64;
            let mut ok = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(full(StatusCode::BAD_REQUEST, "text/plain", "body error"));
                };
                if let Ok(data) = frame.into_data() {
                    ok &= data
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == ((n + i as u64) % 251) as u8);
                    n += data.len() as u64;
                }
            }
            full(
                StatusCode::OK,
                "application/json",
                format!("{{\"bytes\":{n},\"ok\":{ok}}}"),
            )
        }
        (Method::POST, "/echo") => {
            let body = req
                .into_body()
                .map_err(|e| std::io::Error::other(e.to_string()))
                .boxed();
            Response::new(body)
        }
        (Method::GET, "/ws") => websocket(req),
        _ => full(StatusCode::NOT_FOUND, "text/plain", "not found"),
    })
}

/// Answers a WebSocket handshake and echoes every message on the upgraded connection.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(StatusCode::BAD_REQUEST, "text/plain", "not a websocket");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = full(StatusCode::SWITCHING_PROTOCOLS, "text/plain", "");
    let h = r.headers_mut();
    h.remove(hyper::header::CONTENT_TYPE);
    h.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = derive_accept_key(key.as_bytes()).parse() {
        h.insert("sec-websocket-accept", v);
    }
    r
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("cairn-testapp listening on {addr}");
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(handle))
                .with_upgrades()
                .await;
        });
    }
}
