//! A minimal Jupyter client for tests: start a kernel, run one piece of code in it
//! over the kernel's WebSocket, read the result, delete the kernel.
//!
//! Everything is addressed from a base URL — the server's own (`http://IP:8888/i/x/`)
//! or a proxy's in front of it — and sent with the caller's extra headers, e.g.
//! `Authorization: token T` or a `Cookie`. For cookie authentication Jupyter also
//! wants an XSRF token on POST and DELETE: when a `Cookie` header carries `_xsrf=V`
//! and no `X-XSRFToken` header is given, one is added with V.
//!
//! Messages are Jupyter message protocol 5.3 JSON with a `channel` field, which is
//! what Jupyter Server speaks on `api/kernels/{id}/channels` when the client asks
//! for no WebSocket subprotocol. Plain `ws://` only: no TLS.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;

/// Longest wait for a piece of code to finish, from opening the WebSocket on.
pub const EXECUTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for any single HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `code` in a new kernel of the Jupyter server at `base` and returns the
/// `text/plain` form of its `execute_result` (for `1+1`, `"2"`). The kernel is
/// deleted afterwards whatever happened. Fails if the code raises, produces no
/// result, or takes longer than [`EXECUTE_TIMEOUT`].
pub async fn execute(
    base: &str,
    headers: &[(String, String)],
    code: &str,
) -> Result<String, String> {
    let base = with_slash(base);
    let headers = with_xsrf(headers);
    let client = http_client()?;
    let kernel = create_kernel(&client, &base, &headers).await?;
    let result =
        match tokio::time::timeout(EXECUTE_TIMEOUT, run(&base, &headers, &kernel, code)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "kernel {kernel} at {base}: no result within {} s",
                EXECUTE_TIMEOUT.as_secs()
            )),
        };
    let deleted = delete_kernel(&client, &base, &headers, &kernel).await;
    let value = result?;
    deleted?;
    Ok(value)
}

/// Waits until `GET {base}api` answers 200 (it needs no authentication), polling.
pub async fn wait_until_up(base: &str, timeout: Duration) -> Result<(), String> {
    let url = format!("{}api", with_slash(base));
    let client = http_client()?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{url} did not answer 200 within {} s (last: {last})",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

fn with_slash(base: &str) -> String {
    if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    }
}

/// `headers`, plus `X-XSRFToken` from a `Cookie` header's `_xsrf` when not given.
fn with_xsrf(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = headers.to_vec();
    if headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-xsrftoken"))
    {
        return out;
    }
    let xsrf = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("_xsrf=").map(str::to_string));
    if let Some(token) = xsrf {
        out.push(("X-XSRFToken".to_string(), token));
    }
    out
}

fn apply(
    mut req: reqwest::RequestBuilder,
    headers: &[(String, String)],
) -> reqwest::RequestBuilder {
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req
}

/// `POST {base}api/kernels`; the new kernel's id.
async fn create_kernel(
    client: &reqwest::Client,
    base: &str,
    headers: &[(String, String)],
) -> Result<String, String> {
    let url = format!("{base}api/kernels");
    let resp = apply(client.post(&url), headers)
        .json(&json!({}))
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("POST {url}: reading the body: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST {url}: HTTP {status}: {body}"));
    }
    let v: Value =
        serde_json::from_str(&body).map_err(|e| format!("POST {url}: not JSON ({e}): {body}"))?;
    v["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("POST {url}: no kernel id in {body}"))
}

/// `DELETE {base}api/kernels/{id}`.
async fn delete_kernel(
    client: &reqwest::Client,
    base: &str,
    headers: &[(String, String)],
    kernel: &str,
) -> Result<(), String> {
    let url = format!("{base}api/kernels/{kernel}");
    let resp = apply(client.delete(&url), headers)
        .send()
        .await
        .map_err(|e| format!("DELETE {url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = resp.text().await.unwrap_or_default();
        Err(format!("DELETE {url}: HTTP {status}: {body}"))
    }
}

/// Random hex, for message and session ids.
fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The execute request, over the kernel's channels WebSocket, and its result.
async fn run(
    base: &str,
    headers: &[(String, String)],
    kernel: &str,
    code: &str,
) -> Result<String, String> {
    let ws_base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        return Err(format!("base URL {base} is neither http:// nor https://"));
    };
    let session = random_id();
    let url = format!("{ws_base}api/kernels/{kernel}/channels?session_id={session}");
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("WebSocket request for {url}: {e}"))?;
    for (k, v) in headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header name {k:?}: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("header {k} value: {e}"))?;
        req.headers_mut().append(name, value);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| format!("WebSocket {url}: {e}"))?;

    let msg_id = random_id();
    let request = json!({
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "session": session,
            "username": "cairn-tests",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": false,
            "store_history": false,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": true,
        },
        "channel": "shell",
        "buffers": [],
    });
    ws.send(Message::text(request.to_string()))
        .await
        .map_err(|e| format!("WebSocket {url}: sending execute_request: {e}"))?;

    let outcome = read_result(&mut ws, &msg_id).await;
    let _ = ws.close(None).await;
    outcome.map_err(|e| format!("kernel {kernel} at {base}: {e}"))
}

/// Reads the kernel's messages for the request `msg_id` until its iopub `idle`
/// status, which comes after everything else the request produced on iopub.
async fn read_result<S>(ws: &mut S, msg_id: &str) -> Result<String, String>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut result = None;
    while let Some(msg) = ws.next().await {
        let text = match msg.map_err(|e| format!("WebSocket: {e}"))? {
            Message::Text(t) => t,
            Message::Close(frame) => {
                return Err(format!("WebSocket closed by the server: {frame:?}"))
            }
            // Binary frames carry buffers, which this client never asks for.
            _ => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if v["parent_header"]["msg_id"].as_str() != Some(msg_id) {
            continue;
        }
        let content = &v["content"];
        match (v["channel"].as_str(), v["header"]["msg_type"].as_str()) {
            (Some("iopub"), Some("execute_result")) => {
                result = Some(
                    content["data"]["text/plain"]
                        .as_str()
                        .ok_or_else(|| format!("execute_result without text/plain: {content}"))?
                        .to_string(),
                );
            }
            (Some("iopub"), Some("error")) => {
                return Err(format!(
                    "the code raised {}: {}",
                    content["ename"].as_str().unwrap_or("?"),
                    content["evalue"].as_str().unwrap_or("?")
                ));
            }
            (Some("shell"), Some("execute_reply")) if content["status"] != "ok" => {
                return Err(format!("execute_reply: {content}"));
            }
            (Some("iopub"), Some("status")) if content["execution_state"] == "idle" => {
                return result.ok_or_else(|| "the code finished without an execute_result".into());
            }
            _ => {}
        }
    }
    Err("WebSocket ended before the kernel went idle".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_xsrf_from_the_cookie_only_when_missing() {
        let cookie = vec![(
            "Cookie".to_string(),
            "a=1; _xsrf=2|abc|def; username-x=y".to_string(),
        )];
        assert_eq!(
            with_xsrf(&cookie).last(),
            Some(&("X-XSRFToken".to_string(), "2|abc|def".to_string()))
        );
        let mut given = cookie.clone();
        given.push(("x-xsrftoken".to_string(), "mine".to_string()));
        assert_eq!(with_xsrf(&given), given);
        let token = vec![("Authorization".to_string(), "token t".to_string())];
        assert_eq!(with_xsrf(&token), token);
        assert_eq!(with_slash("http://h/i/x"), "http://h/i/x/");
        assert_eq!(with_slash("http://h/"), "http://h/");
    }
}
