//! Join tokens: short-lived, limited-use secrets that let a new host enrol.
//!
//! A token reads `ID.SECRET`. The id finds the record; only the secret's SHA-256 is
//! stored. Checking a token is a pure function of the record and `now`
//! ([`JoinToken::check`]); consuming one ([`TokenStore::consume`]) is serialised so two
//! hosts racing for the last use cannot both win.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::auth;
use crate::store::{Store, StoreError, Tree};
use cairn_shared::ids::HostId;
use cairn_shared::protocol::RefusalCode;

/// A stored join token (secret hashed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinToken {
    pub id: String,
    pub secret_sha256: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub max_uses: u32,
    pub uses: u32,
    pub description: String,
    /// Hosts that enrolled with this token.
    pub used_by: Vec<HostId>,
}

/// Why a token was refused; the message is what the joining operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the join token is malformed: expected ID.SECRET as printed by `cairn-controller token create`")]
    Malformed,
    #[error("the join token is not known to this controller (mistyped, revoked, or for another controller)")]
    Unknown,
    #[error("the join token {id} expired {ago_s} s ago; create a new one with `cairn-controller token create`")]
    Expired { id: String, ago_s: u64 },
    #[error("the join token {id} is used up ({uses} of {max} uses); create a new one with `cairn-controller token create`")]
    UsedUp { id: String, uses: u32, max: u32 },
}

impl TokenRefusal {
    pub fn code(&self) -> RefusalCode {
        match self {
            TokenRefusal::Malformed | TokenRefusal::Unknown => RefusalCode::TokenUnknown,
            TokenRefusal::Expired { .. } => RefusalCode::TokenExpired,
            TokenRefusal::UsedUp { .. } => RefusalCode::TokenUsedUp,
        }
    }
}

/// Splits `ID.SECRET`, checking the shape of both halves.
pub fn split_token(token: &str) -> Result<(&str, &str), TokenRefusal> {
    let (id, secret) = token
        .trim()
        .split_once('.')
        .ok_or(TokenRefusal::Malformed)?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(id, 8) || !hex(secret, 32) {
        return Err(TokenRefusal::Malformed);
    }
    Ok((id, secret))
}

impl JoinToken {
    /// Whether `secret` may enrol one more host at `now`.
    pub fn check(&self, secret: &str, now_ms: u64) -> Result<(), TokenRefusal> {
        if !auth::matches_digest(secret, &self.secret_sha256) {
            // Same answer as for an unknown id: a wrong secret must not confirm that
            // the id exists.
            return Err(TokenRefusal::Unknown);
        }
        if now_ms >= self.expires_ms {
            return Err(TokenRefusal::Expired {
                id: self.id.clone(),
                ago_s: (now_ms - self.expires_ms) / 1000,
            });
        }
        if self.uses >= self.max_uses {
            return Err(TokenRefusal::UsedUp {
                id: self.id.clone(),
                uses: self.uses,
                max: self.max_uses,
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Refused(#[from] TokenRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A freshly created token: the only time the secret is seen.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedToken {
    pub token: String,
    pub record: JoinToken,
}

/// A join token as the API lists it: without its secret's hash.
impl From<JoinToken> for cairn_api::join_tokens::JoinTokenView {
    fn from(t: JoinToken) -> Self {
        cairn_api::join_tokens::JoinTokenView {
            id: t.id,
            description: t.description,
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            max_uses: t.max_uses,
            uses: t.uses,
            used_by: t.used_by,
        }
    }
}

impl CreatedToken {
    /// The answer that shows the secret, once, with the CA fingerprint a joining
    /// host pins.
    pub fn view(
        self,
        ca: &cairn_shared::identity::Fingerprint,
    ) -> cairn_api::join_tokens::CreatedTokenView {
        cairn_api::join_tokens::CreatedTokenView {
            token: self.token,
            id: self.record.id,
            expires_ms: self.record.expires_ms,
            uses: self.record.max_uses,
            ca_sha256: ca.to_string(),
        }
    }
}

/// Join tokens in the store.
#[derive(Debug)]
pub struct TokenStore {
    store: Store,
    consume_lock: Mutex<()>,
}

impl TokenStore {
    pub fn new(store: Store) -> Self {
        TokenStore {
            store,
            consume_lock: Mutex::new(()),
        }
    }

    pub async fn create(
        &self,
        ttl_ms: u64,
        max_uses: u32,
        description: String,
        now_ms: u64,
    ) -> Result<CreatedToken, StoreError> {
        let id = auth::random_secret(4);
        let secret = auth::random_secret(16);
        let record = JoinToken {
            id: id.clone(),
            secret_sha256: auth::digest_hex(&secret),
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl_ms),
            max_uses,
            uses: 0,
            description,
            used_by: vec![],
        };
        self.store.put(Tree::JoinTokens, &id, &record)?;
        self.store.flush().await?;
        Ok(CreatedToken {
            token: format!("{id}.{secret}"),
            record,
        })
    }

    /// Checks the token and counts one use by `host`, durably, before returning.
    pub async fn consume(
        &self,
        token: &str,
        host: &HostId,
        now_ms: u64,
    ) -> Result<JoinToken, ConsumeError> {
        let (id, secret) = split_token(token)?;
        let record = {
            let _guard = self.consume_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut record: JoinToken = self
                .store
                .get(Tree::JoinTokens, id)?
                .ok_or(TokenRefusal::Unknown)?;
            record.check(secret, now_ms)?;
            record.uses += 1;
            record.used_by.push(host.clone());
            self.store.put(Tree::JoinTokens, id, &record)?;
            record
        };
        self.store.flush().await?;
        Ok(record)
    }

    pub fn list(&self) -> Result<Vec<JoinToken>, StoreError> {
        self.store.all(Tree::JoinTokens)
    }

    /// Deletes tokens past their expiry by the grace period; how many.
    pub async fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        let due: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|t| crate::retention::join_token_due(t.expires_ms, now_ms))
            .map(|t| t.id)
            .collect();
        for id in &due {
            self.store.remove(Tree::JoinTokens, id)?;
        }
        self.store.flush().await?;
        Ok(due.len())
    }

    /// Deletes a token; true if it existed.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.store.get::<JoinToken>(Tree::JoinTokens, id)?.is_some();
        self.store.remove(Tree::JoinTokens, id)?;
        self.store.flush().await?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_expire_and_run_out() {
        let tmp = tempfile::tempdir().unwrap();
        let ts = TokenStore::new(Store::open(tmp.path()).unwrap());
        let t = ts
            .create(60_000, 2, "two hosts".into(), 1_000)
            .await
            .unwrap();
        let (h1, h2, h3) = (HostId::generate(), HostId::generate(), HostId::generate());
        ts.consume(&t.token, &h1, 2_000).await.unwrap();
        let r = ts.consume(&t.token, &h2, 3_000).await.unwrap();
        assert_eq!((r.uses, r.used_by.clone()), (2, vec![h1, h2]));
        let err = ts
            .consume(&t.token, &h3, 4_000)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("used up (2 of 2 uses)"), "{err}");

        let t2 = ts.create(1_000, 5, String::new(), 10_000).await.unwrap();
        let err = ts
            .consume(&t2.token, &h3, 16_000)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("expired 5 s ago"), "{err}");

        // A right id with a wrong secret looks exactly like an unknown token.
        let (id, _) = split_token(&t2.token).unwrap();
        let forged = format!("{id}.{}", "0".repeat(32));
        let err = ts.consume(&forged, &h3, 10_500).await.unwrap_err();
        assert!(
            matches!(err, ConsumeError::Refused(TokenRefusal::Unknown)),
            "{err}"
        );
        assert!(matches!(
            ts.consume("garbage", &h3, 0).await,
            Err(ConsumeError::Refused(TokenRefusal::Malformed))
        ));
    }

    #[tokio::test]
    async fn concurrent_consumers_never_exceed_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let ts = std::sync::Arc::new(TokenStore::new(Store::open(tmp.path()).unwrap()));
        let t = ts.create(60_000, 3, String::new(), 0).await.unwrap();
        let mut tasks = vec![];
        for _ in 0..20 {
            let (ts, tok) = (ts.clone(), t.token.clone());
            tasks.push(tokio::spawn(async move {
                ts.consume(&tok, &HostId::generate(), 1).await.is_ok()
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        assert_eq!(ok, 3);
    }
}
