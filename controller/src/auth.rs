//! Secrets the controller hands out, and how a request proves who sent it.
//!
//! The admin API token and join tokens are random, shown once, and stored only as
//! SHA-256 digests compared in constant time. A request carries a login token either
//! as `Authorization: Bearer …` (the CLI, scripts) or in the [`SESSION_COOKIE`] (the web
//! UI and the proxy, so a browser never handles the token itself).

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A random secret of `bytes` bytes, hex encoded.
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// SHA-256 of a secret, hex encoded.
pub fn digest_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares a presented secret with a stored digest without leaking, through timing,
/// how much of it matched.
pub fn matches_digest(secret: &str, digest_hex_stored: &str) -> bool {
    let presented = Sha256::digest(secret.as_bytes());
    let Ok(stored) = hex::decode(digest_hex_stored) else {
        return false;
    };
    if stored.len() != presented.len() {
        return false;
    }
    presented
        .iter()
        .zip(stored.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// A new admin API token.
pub fn new_admin_token() -> String {
    format!("cairn-admin-{}", random_secret(24))
}

/// The cookie that carries a browser's login token. `HttpOnly`, so scripts (including
/// those of a proxied app) cannot read it.
pub const SESSION_COOKIE: &str = "cairn_session";

/// How a request presented its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
}

impl<'a> Credential<'a> {
    pub fn token(self) -> &'a str {
        match self {
            Credential::Bearer(t) | Credential::Cookie(t) => t,
        }
    }
}

/// The token a request carries: a bearer header wins over the session cookie.
pub fn credential(headers: &axum::http::HeaderMap) -> Option<Credential<'_>> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(t) = bearer {
        return Some(Credential::Bearer(t));
    }
    cookie(headers, SESSION_COOKIE).map(Credential::Cookie)
}

/// The value of cookie `name`, if the request has one.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// A CSRF token for form posts of the session whose token is `session`: derived from
/// it, so it needs no storage, and useless without the cookie it belongs to.
pub fn csrf_token(session: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"cairn-csrf\0");
    h.update(session.as_bytes());
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_come_from_bearer_or_cookie() {
        let h = headers(&[("cookie", "a=1; cairn_session=tok; b=2")]);
        assert_eq!(credential(&h), Some(Credential::Cookie("tok")));
        let h = headers(&[
            ("authorization", "Bearer abc"),
            ("cookie", "cairn_session=tok"),
        ]);
        assert_eq!(credential(&h), Some(Credential::Bearer("abc")));
        let h = headers(&[("cookie", "x=1"), ("cookie", "cairn_session=t2")]);
        assert_eq!(credential(&h), Some(Credential::Cookie("t2")));
        assert_eq!(credential(&headers(&[("authorization", "Basic x")])), None);
        assert_eq!(credential(&headers(&[("cookie", "cairn_session=")])), None);
    }

    #[test]
    fn csrf_tokens_differ_per_session() {
        assert_eq!(csrf_token("a"), csrf_token("a"));
        assert_ne!(csrf_token("a"), csrf_token("b"));
    }

    #[test]
    fn digests_match_only_their_secret() {
        let t = new_admin_token();
        let d = digest_hex(&t);
        assert!(matches_digest(&t, &d));
        assert!(!matches_digest(&format!("{t}x"), &d));
        assert!(!matches_digest(&t, "zz"));
        assert!(!matches_digest(&t, &d[..10]));
    }
}
