//! A small typed HTTP client for the controller's REST API.
//!
//! Requests go to `BASE/api/v1/...` with the bearer token; every path segment taken
//! from the user is percent-encoded. An answer outside 2xx becomes
//! [`Error::Api`] carrying the API's `{"error": {"code", "message", "fields"?}}` (or
//! a stand-in when the body is not that, e.g. from a proxy); a refused connection
//! becomes [`Error::Unreachable`].

use std::time::Duration;

use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::Settings;
use cairn_api::error::ErrorBody;
use cairn_api::session::Login;

use crate::error::{one_line, ApiError, Error};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The API client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    url: String,
    token: Option<String>,
    /// Added to the "not logged in" message, e.g. why a saved token was not used.
    not_logged_in_hint: String,
}

impl Client {
    /// A client for the settings' URL and token. Fails on a URL that is not `http://`.
    pub fn new(settings: &Settings) -> Result<Self, Error> {
        let base = parse_base_url(&settings.url)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("cairn-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Http(format!("setting up the HTTP client: {e}")))?;
        let not_logged_in_hint = match &settings.token_withheld_for {
            Some(other) => format!(" (the saved token is for {other})"),
            None => String::new(),
        };
        Ok(Client {
            http,
            base,
            url: settings.url.clone(),
            token: settings.token.clone(),
            not_logged_in_hint,
        })
    }

    /// The controller's URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The token requests carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `BASE/api/v1/<segments...>?<query>`.
    pub fn endpoint(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut path) = u.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        if !query.is_empty() {
            u.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        u
    }

    /// An absolute URL for a path the API hands out (such as an app's `/i/ID/`).
    pub fn absolute(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            return path_or_url.to_string();
        }
        format!(
            "{}/{}",
            self.url.trim_end_matches('/'),
            path_or_url.trim_start_matches('/')
        )
    }

    fn bearer(&self) -> Result<&str, Error> {
        self.token.as_deref().ok_or_else(|| Error::NotLoggedIn {
            url: self.url.clone(),
            hint: self.not_logged_in_hint.clone(),
        })
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        auth: bool,
    ) -> Result<reqwest::Response, Error> {
        let mut req = self.http.request(method, url);
        if auth {
            req = req.bearer_auth(self.bearer()?);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.execute(req).await
    }

    /// Sends a built request; an answer outside 2xx becomes [`Error::Api`].
    async fn execute(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let reason = status.canonical_reason().unwrap_or("").to_string();
        let text = resp.text().await.unwrap_or_default();
        Err(Error::Api(api_error(status.as_u16(), &reason, &text)))
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        if e.is_connect() {
            return Error::Unreachable {
                url: self.url.clone(),
                detail: root_cause(e),
            };
        }
        if e.is_timeout() {
            return Error::Http(format!(
                "the controller at {} did not answer in time ({})",
                self.url,
                root_cause(e)
            ));
        }
        Error::Http(format!(
            "talking to the controller at {}: {}",
            self.url,
            root_cause(e)
        ))
    }

    /// Sends an authenticated request; returns the JSON answer (`null` for an empty
    /// body, such as a 204).
    pub async fn json(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let resp = self
            .send(method, self.endpoint(segments, query), body, true)
            .await?;
        read_json(resp).await
    }

    /// Sends an authenticated request with its own time limit instead of the usual
    /// one, for requests that take long by nature (sending or checking an image
    /// archive): `headers` are added, and `body` is sent as it is (it may be a stream,
    /// so a large file is never read whole). Returns the JSON answer.
    pub async fn send_long(
        &self,
        method: Method,
        segments: &[&str],
        headers: &[(&str, String)],
        body: Option<reqwest::Body>,
        timeout: Duration,
    ) -> Result<Value, Error> {
        self.send_long_query(method, segments, &[], headers, body, timeout)
            .await
    }

    /// [`Client::send_long`] with a query string.
    pub async fn send_long_query(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: Option<reqwest::Body>,
        timeout: Duration,
    ) -> Result<Value, Error> {
        let mut req = self
            .http
            .request(method, self.endpoint(segments, query))
            .bearer_auth(self.bearer()?)
            .timeout(timeout);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = self.execute(req).await?;
        read_json(resp).await
    }

    /// `GET` with authentication, JSON answer.
    pub async fn get(&self, segments: &[&str]) -> Result<Value, Error> {
        self.json(Method::GET, segments, &[], None).await
    }

    /// `POST` with authentication, JSON body and answer.
    pub async fn post(&self, segments: &[&str], body: Option<&Value>) -> Result<Value, Error> {
        self.json(Method::POST, segments, &[], body).await
    }

    /// `DELETE` with authentication, JSON answer.
    pub async fn delete(&self, segments: &[&str]) -> Result<Value, Error> {
        self.json(Method::DELETE, segments, &[], None).await
    }

    /// Sends an authenticated `GET`; returns the body's bytes as they are.
    pub async fn bytes(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Vec<u8>, Error> {
        let resp = self
            .send(Method::GET, self.endpoint(segments, query), None, true)
            .await?;
        let b = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        Ok(b.to_vec())
    }

    /// Sends an authenticated `GET` and writes the body to `out` as it arrives
    /// (a snapshot's tar can be larger than memory); the bytes written.
    pub async fn download(
        &self,
        segments: &[&str],
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, Error> {
        let mut resp = self
            .execute(
                self.http
                    .request(Method::GET, self.endpoint(segments, &[]))
                    .bearer_auth(self.bearer()?)
                    .timeout(Duration::from_secs(24 * 3600)),
            )
            .await?;
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e))? {
            out.write_all(&chunk)
                .map_err(|e| Error::Usage(format!("writing the download: {e}")))?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    /// `POST /api/v1/register`: sign-up, without a token.
    pub async fn register(&self, body: &Value) -> Result<Value, Error> {
        let resp = self
            .send(
                Method::POST,
                self.endpoint(&["register"], &[]),
                Some(body),
                false,
            )
            .await?;
        read_json(resp).await
    }

    /// `PUT` with authentication, JSON body and answer.
    pub async fn put(&self, segments: &[&str], body: Option<&Value>) -> Result<Value, Error> {
        self.json(Method::PUT, segments, &[], body).await
    }

    /// `POST /api/v1/login`, one of the two calls without a token.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        description: &str,
    ) -> Result<Value, Error> {
        let body = body(&Login {
            user: user.into(),
            password: password.into(),
            description: description.into(),
        })?;
        let resp = self
            .send(
                Method::POST,
                self.endpoint(&["login"], &[]),
                Some(&body),
                false,
            )
            .await?;
        read_json(resp).await
    }
}

async fn read_json(resp: reqwest::Response) -> Result<Value, Error> {
    let bytes = resp.bytes().await.map_err(|e| {
        Error::Http(format!(
            "reading the controller's answer: {}",
            root_cause(&e)
        ))
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Http(format!("the controller's answer is not JSON: {e}")))
}

/// Reads a typed value out of an API answer.
pub fn parse<T: DeserializeOwned>(v: &Value, what: &str) -> Result<T, Error> {
    T::deserialize(v).map_err(|e| {
        Error::Http(format!(
            "unexpected answer from the controller for {what}: {e}"
        ))
    })
}

/// A typed request body as the JSON the client sends.
pub fn body<T: serde::Serialize>(b: &T) -> Result<Value, Error> {
    serde_json::to_value(b).map_err(|e| Error::Http(format!("cannot encode the request: {e}")))
}

/// Checks a base URL: plain `http://` (this build has no TLS), with a host.
pub fn parse_base_url(url: &str) -> Result<Url, Error> {
    let u = Url::parse(url).map_err(|e| {
        Error::Usage(format!(
            "invalid controller URL {url:?}: {e} (expected e.g. {})",
            crate::config::DEFAULT_URL
        ))
    })?;
    match u.scheme() {
        "http" if u.host_str().is_some() => Ok(u),
        "https" => Err(Error::Usage(format!(
            "invalid controller URL {url:?}: this cairn speaks plain HTTP only; use an http:// URL"
        ))),
        _ => Err(Error::Usage(format!(
            "invalid controller URL {url:?}: expected http://HOST:PORT, e.g. {}",
            crate::config::DEFAULT_URL
        ))),
    }
}

/// The API error in an error answer, or a stand-in made from the status and the first
/// line of the body when the body is not the API's error JSON.
pub fn api_error(status: u16, reason: &str, body: &str) -> ApiError {
    if let Ok(ErrorBody { error }) = serde_json::from_str::<ErrorBody>(body) {
        return ApiError {
            status,
            code: if error.code.is_empty() {
                format!("http_{status}")
            } else {
                error.code
            },
            message: error.message,
            fields: error.fields,
        };
    }
    let mut message = format!("the controller answered HTTP {status} {reason}")
        .trim_end()
        .to_string();
    let first = body.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let first: String = one_line(first).chars().take(200).collect();
    if !first.is_empty() {
        message.push_str(": ");
        message.push_str(&first);
    }
    ApiError {
        status,
        code: format!("http_{status}"),
        message,
        fields: vec![],
    }
}

/// The innermost cause of an error ("Connection refused (os error 111)"), which says
/// more than reqwest's outer "error sending request for url".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, Source};

    fn settings(url: &str) -> Settings {
        Settings {
            url: url.into(),
            url_source: Source::Flag,
            token: None,
            token_source: None,
            token_withheld_for: None,
        }
    }

    #[test]
    fn endpoints_are_built_and_encoded() {
        let c = Client::new(&settings("http://127.0.0.1:7080")).unwrap();
        assert_eq!(
            c.endpoint(&["blueprints", "py/../x?y"], &[]).as_str(),
            "http://127.0.0.1:7080/api/v1/blueprints/py%2F..%2Fx%3Fy"
        );
        assert_eq!(
            c.endpoint(&["instances"], &[("all", "true".into())])
                .as_str(),
            "http://127.0.0.1:7080/api/v1/instances?all=true"
        );
        let c = Client::new(&settings("http://h/cairn/")).unwrap();
        assert_eq!(
            c.endpoint(&["me"], &[]).as_str(),
            "http://h/cairn/api/v1/me"
        );
        assert_eq!(c.absolute("/i/i-1/"), "http://h/cairn/i/i-1/");
        assert_eq!(c.absolute("http://x/y"), "http://x/y");
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(parse_base_url("http://cairn.example.org:7080").is_ok());
        for bad in ["https://x", "ftp://x", "127.0.0.1:7080", "not a url"] {
            let e = parse_base_url(bad).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{bad}");
        }
    }

    #[test]
    fn api_errors_are_read_from_the_body_or_made_up() {
        let e = api_error(
            400,
            "Bad Request",
            r#"{"error":{"code":"invalid_blueprint","message":"invalid blueprint: name: required","fields":[{"field":"name","message":"required"}]}}"#,
        );
        assert_eq!(e.code, "invalid_blueprint");
        assert_eq!(e.fields.len(), 1);
        let e = api_error(
            409,
            "Conflict",
            r#"{"error":{"code":"limit_reached","message":"at most 2"}}"#,
        );
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("limit_reached", "at most 2")
        );
        assert!(e.fields.is_empty());
        let e = api_error(502, "Bad Gateway", "\n<html>\n<h1>Bad gateway</h1>");
        assert_eq!(e.code, "http_502");
        assert_eq!(
            e.message,
            "the controller answered HTTP 502 Bad Gateway: <html>"
        );
        let e = api_error(500, "", "");
        assert_eq!(e.message, "the controller answered HTTP 500");
    }

    #[tokio::test]
    async fn no_token_means_not_logged_in_without_a_request() {
        let mut s = settings("http://127.0.0.1:9");
        s.token_withheld_for = Some("http://other:7080".into());
        let c = Client::new(&s).unwrap();
        let e = c.get(&["me"]).await.unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.to_string(),
            "not logged in to http://127.0.0.1:9 (the saved token is for http://other:7080); run `cairn login` or set CAIRN_TOKEN"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The listener is dropped: nothing listens there now.
        let mut s = settings(&format!("http://127.0.0.1:{port}"));
        s.token = Some("t".into());
        let c = Client::new(&s).unwrap();
        let e = c.get(&["me"]).await.unwrap_err();
        assert_eq!(e.exit_code(), 69, "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "cannot reach the controller at http://127.0.0.1:{port}: "
            )),
            "{e}"
        );
    }
}
