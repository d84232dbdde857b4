//! API tokens: created by login, presented as `Authorization: Bearer cairn_ID.SECRET`,
//! revocable one by one. Only the secret's SHA-256 is stored.

use serde::{Deserialize, Serialize};

use crate::auth;
use crate::store::{Store, StoreError, Tree};

/// How long a login token lives.
pub const DEFAULT_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    pub user: String,
    pub secret_sha256: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub revoked: bool,
    pub description: String,
}

/// An API token as the API lists it: without its secret's hash.
impl From<ApiTokenRecord> for cairn_api::session::ApiTokenView {
    fn from(t: ApiTokenRecord) -> Self {
        cairn_api::session::ApiTokenView {
            id: t.id,
            user: t.user,
            description: t.description,
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            revoked: t.revoked,
        }
    }
}

/// Splits `cairn_ID.SECRET`.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("cairn_")?;
    let (id, secret) = rest.split_once('.')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 32)).then_some((id, secret))
}

#[derive(Debug)]
pub struct ApiTokens {
    store: Store,
}

impl ApiTokens {
    pub fn new(store: Store) -> Self {
        ApiTokens { store }
    }

    /// Issues a token for `user`; returns the secret form (shown once) and the record.
    pub async fn issue(
        &self,
        user: &str,
        description: &str,
        now_ms: u64,
    ) -> Result<(String, ApiTokenRecord), StoreError> {
        let id = auth::random_secret(8);
        let secret = auth::random_secret(16);
        let rec = ApiTokenRecord {
            id: id.clone(),
            user: user.to_string(),
            secret_sha256: auth::digest_hex(&secret),
            created_ms: now_ms,
            expires_ms: now_ms + DEFAULT_TTL_MS,
            revoked: false,
            description: description.chars().take(200).collect(),
        };
        self.store.put(Tree::ApiTokens, &id, &rec)?;
        self.store.flush().await?;
        Ok((format!("cairn_{id}.{secret}"), rec))
    }

    /// The record of a presented token if it is valid now.
    pub fn check(&self, token: &str, now_ms: u64) -> Result<Option<ApiTokenRecord>, StoreError> {
        let Some((id, secret)) = split(token) else {
            return Ok(None);
        };
        let Some(rec) = self.store.get::<ApiTokenRecord>(Tree::ApiTokens, id)? else {
            return Ok(None);
        };
        let ok = auth::matches_digest(secret, &rec.secret_sha256)
            && !rec.revoked
            && now_ms < rec.expires_ms;
        Ok(ok.then_some(rec))
    }

    pub fn get(&self, id: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        self.store.get(Tree::ApiTokens, id)
    }

    pub fn list_for(&self, user: Option<&str>) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let mut v: Vec<ApiTokenRecord> = self
            .store
            .all::<ApiTokenRecord>(Tree::ApiTokens)?
            .into_iter()
            .filter(|t| user.is_none_or(|u| t.user == u))
            .collect();
        v.sort_by_key(|t| t.created_ms);
        Ok(v)
    }

    /// Deletes expired and revoked tokens (web sessions included); how many.
    pub async fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        let due: Vec<String> = self
            .store
            .all::<ApiTokenRecord>(Tree::ApiTokens)?
            .into_iter()
            .filter(|t| crate::retention::api_token_due(t.expires_ms, t.revoked, now_ms))
            .map(|t| t.id)
            .collect();
        for id in &due {
            self.store.remove(Tree::ApiTokens, id)?;
        }
        self.store.flush().await?;
        Ok(due.len())
    }

    /// Revokes a token; false if there is none with that id.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let Some(mut rec) = self.get(id)? else {
            return Ok(false);
        };
        rec.revoked = true;
        self.store.put(Tree::ApiTokens, id, &rec)?;
        self.store.flush().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_check_expire_and_revoke() {
        let tmp = tempfile::tempdir().unwrap();
        let t = ApiTokens::new(Store::open(tmp.path()).unwrap());
        let (secret, rec) = t.issue("alice", "cli", 1000).await.unwrap();
        assert_eq!(t.check(&secret, 2000).unwrap().unwrap().user, "alice");
        assert!(
            t.check(&secret, 1000 + DEFAULT_TTL_MS).unwrap().is_none(),
            "expired"
        );
        let forged = format!("cairn_{}.{}", rec.id, "0".repeat(32));
        assert!(t.check(&forged, 2000).unwrap().is_none());
        assert!(t.check("garbage", 2000).unwrap().is_none());
        assert!(t.revoke(&rec.id).await.unwrap());
        assert!(t.check(&secret, 2000).unwrap().is_none(), "revoked");
        assert!(!t.revoke("0123456789abcdef").await.unwrap());
        let (_, live) = t.issue("bob", "web", 1000).await.unwrap();
        let (_, old) = t.issue("bob", "web", 0).await.unwrap();
        // At 1000 + TTL - 1: the revoked one and the one issued at 0 go.
        assert_eq!(t.prune(1000 + DEFAULT_TTL_MS - 1).await.unwrap(), 2);
        let left: Vec<String> = t
            .list_for(None)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, std::slice::from_ref(&live.id));
        assert!(t.get(&old.id).unwrap().is_none());
        assert_eq!(t.prune(1000 + DEFAULT_TTL_MS).await.unwrap(), 1);
    }
}
