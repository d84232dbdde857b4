//! What the proxy changes in a request on its way to an app, and in the response on
//! its way back. Pure functions of headers and paths, so every rule is unit-tested.
//!
//! * Hop-by-hop headers end at the proxy (RFC 9110 §7.6.1); an upgrade is passed on.
//! * Cairn's own credentials never reach the app: the session cookie is cut out of
//!   `Cookie`, and a bearer token used for Cairn is removed. A proxied app is the
//!   user's code and must not learn a token that opens the user's Cairn account.
//! * The app's own credential is added instead (Jupyter's token), so a logged-in owner
//!   is never asked for it.
//! * `X-Forwarded-*` say who asked and where; `Host` is kept as the browser sent it,
//!   because Jupyter compares it with `Origin` to accept WebSockets.
//! * Jupyter knows its base URL and gets the full path; other apps get the path with
//!   `/i/{id}` cut off, and their absolute redirects get it put back.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::auth::SESSION_COOKIE;
use crate::blueprints::spec::AppKind;

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// What the proxy knows about a request when it rewrites it.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub app: AppKind,
    /// `/i/{id}`, without the trailing slash.
    pub prefix: &'a str,
    /// The peer's IP address.
    pub client_ip: Option<std::net::IpAddr>,
    /// `http` or `https`, as the browser sees the controller.
    pub scheme: &'a str,
    /// The request authenticated with `Authorization: Bearer`, which is Cairn's.
    pub bearer_was_cairns: bool,
    /// Jupyter's token, for the `Authorization: token` header.
    pub jupyter_token: Option<&'a str>,
}

/// Whether a request asks to switch protocols (a WebSocket handshake).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including any the `Connection` header names. When
/// `keep_upgrade`, the upgrade handshake survives as `Connection: upgrade` + `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named {
        if !(keep_upgrade && h == header::UPGRADE) {
            headers.remove(h);
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The path and query the app receives.
pub fn upstream_path(app: AppKind, prefix: &str, path_and_query: &str) -> String {
    match app {
        AppKind::Jupyter => path_and_query.to_string(),
        AppKind::Http | AppKind::Rstudio => {
            let rest = path_and_query
                .strip_prefix(prefix)
                .unwrap_or(path_and_query);
            if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            }
        }
    }
}

/// Rewrites the request headers for the app.
pub fn request_headers(headers: &mut HeaderMap, cx: &Context<'_>) {
    let upgrade = is_upgrade(headers);
    strip_hop_by_hop(headers, upgrade);

    // Cairn's session cookie stays here; the app's own cookies go through.
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| c.split_once('=').map(|(k, _)| k.trim()) != Some(SESSION_COOKIE))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
    if cx.bearer_was_cairns {
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(t) = cx.jupyter_token {
        if let Ok(v) = HeaderValue::from_str(&format!("token {t}")) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }

    let host = headers.get(header::HOST).cloned();
    let xff = match (headers.get("x-forwarded-for"), cx.client_ip) {
        (Some(prev), Some(ip)) => prev
            .to_str()
            .ok()
            .map(|p| format!("{p}, {ip}"))
            .unwrap_or_else(|| ip.to_string()),
        (None, Some(ip)) => ip.to_string(),
        (Some(prev), None) => prev.to_str().unwrap_or_default().to_string(),
        (None, None) => String::new(),
    };
    set(headers, "x-forwarded-for", &xff);
    set(headers, "x-forwarded-proto", cx.scheme);
    if let Some(h) = host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), h);
    }
    set(headers, "x-forwarded-prefix", cx.prefix);
    if cx.app == AppKind::Rstudio {
        set(headers, "x-rstudio-root-path", &format!("{}/", cx.prefix));
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if value.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Rewrites the response headers for the browser.
pub fn response_headers(headers: &mut HeaderMap, cx: &Context<'_>, upgraded: bool) {
    strip_hop_by_hop(headers, upgraded);
    // An app must not be able to set or clear the Cairn session.
    let keep: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.split_once('='))
                .map(|(k, _)| k.trim() != SESSION_COOKIE)
                .unwrap_or(true)
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in keep {
        headers.append(header::SET_COOKIE, v);
    }
    if cx.app != AppKind::Jupyter {
        let rewritten = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|l| l.starts_with('/') && !l.starts_with("//"))
            .filter(|l| !l.starts_with(&format!("{}/", cx.prefix)))
            .and_then(|l| HeaderValue::from_str(&format!("{}{l}", cx.prefix)).ok());
        if let Some(v) = rewritten {
            headers.insert(header::LOCATION, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(app: AppKind) -> Context<'static> {
        Context {
            app,
            prefix: "/i/i-0000000000000001",
            client_ip: Some("10.1.2.3".parse().unwrap()),
            scheme: "https",
            bearer_was_cairns: false,
            jupyter_token: None,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn cairn_credentials_stay_and_the_apps_are_added() {
        let mut h = map(&[
            ("cookie", "_xsrf=abc; cairn_session=SECRET"),
            ("cookie", "theme=dark"),
            ("authorization", "Bearer cairn_x.y"),
            ("host", "cairn.example.org"),
        ]);
        let mut c = cx(AppKind::Jupyter);
        c.bearer_was_cairns = true;
        c.jupyter_token = Some("jt");
        request_headers(&mut h, &c);
        assert_eq!(h["cookie"], "_xsrf=abc; theme=dark");
        assert_eq!(h["authorization"], "token jt");
        assert_eq!(h["host"], "cairn.example.org");
        assert_eq!(h["x-forwarded-host"], "cairn.example.org");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-prefix"], "/i/i-0000000000000001");
        assert!(!format!("{h:?}").contains("SECRET"));
    }

    #[test]
    fn an_apps_own_authorization_passes_when_cairn_did_not_use_it() {
        let mut h = map(&[
            ("authorization", "Basic dTpw"),
            ("cookie", "cairn_session=S"),
        ]);
        request_headers(&mut h, &cx(AppKind::Http));
        assert_eq!(h["authorization"], "Basic dTpw");
        assert!(h.get("cookie").is_none());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[("x-forwarded-for", "192.0.2.1")]);
        request_headers(&mut h, &cx(AppKind::Http));
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
    }

    #[test]
    fn hop_by_hop_headers_end_here_but_upgrades_pass() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
        ]);
        request_headers(&mut h, &cx(AppKind::Http));
        for gone in ["connection", "x-secret", "keep-alive", "te", "upgrade"] {
            assert!(h.get(gone).is_none(), "{gone} was forwarded");
        }
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        request_headers(&mut h, &cx(AppKind::Jupyter));
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn paths_keep_or_lose_the_prefix_by_app() {
        let p = "/i/i-0000000000000001";
        assert_eq!(
            upstream_path(AppKind::Jupyter, p, &format!("{p}/lab?x=1")),
            format!("{p}/lab?x=1")
        );
        assert_eq!(
            upstream_path(AppKind::Http, p, &format!("{p}/a/b?x=1")),
            "/a/b?x=1"
        );
        assert_eq!(upstream_path(AppKind::Http, p, &format!("{p}/")), "/");
        assert_eq!(upstream_path(AppKind::Rstudio, p, &format!("{p}?q")), "/?q");
    }

    #[test]
    fn rstudio_learns_its_root_path() {
        let mut h = HeaderMap::new();
        request_headers(&mut h, &cx(AppKind::Rstudio));
        assert_eq!(h["x-rstudio-root-path"], "/i/i-0000000000000001/");
    }

    #[test]
    fn responses_cannot_touch_the_session_and_redirects_get_the_prefix() {
        let mut h = map(&[
            ("set-cookie", "cairn_session=evil; Path=/"),
            ("set-cookie", "app=1"),
            ("location", "/login"),
            ("transfer-encoding", "chunked"),
        ]);
        response_headers(&mut h, &cx(AppKind::Http), false);
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, vec!["app=1"]);
        assert_eq!(h["location"], "/i/i-0000000000000001/login");
        assert!(h.get("transfer-encoding").is_none());

        let mut h = map(&[("location", "/i/i-0000000000000001/x")]);
        response_headers(&mut h, &cx(AppKind::Http), false);
        assert_eq!(h["location"], "/i/i-0000000000000001/x");
        let mut h = map(&[("location", "//elsewhere/x")]);
        response_headers(&mut h, &cx(AppKind::Http), false);
        assert_eq!(h["location"], "//elsewhere/x");
        let mut h = map(&[("location", "/i/i-0000000000000001/lab")]);
        response_headers(&mut h, &cx(AppKind::Jupyter), false);
        assert_eq!(h["location"], "/i/i-0000000000000001/lab");
    }
}
