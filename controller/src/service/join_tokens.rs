//! Join tokens (admins): create (the only time a secret is shown), list, revoke.
//! The offline `cairn-controller token create` (controller stopped, store opened
//! directly by the local operator) goes through [`create`] too, so both paths keep
//! the same bounds.

use super::views::{CreatedTokenView, JoinTokenView};
use super::{now, Caller, Service, ServiceError, ServiceResult};
use crate::tokens::TokenStore;
use cairn_shared::identity::Fingerprint;

/// Longest a join token may live: tokens are for bootstrapping, not credentials.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
pub const MAX_USES: u32 = 100_000;
pub const MAX_DESCRIPTION: usize = 256;

pub use cairn_api::join_tokens::CreateToken;

/// Checks a token request's bounds.
pub fn check(req: &CreateToken) -> ServiceResult<()> {
    if req.ttl_secs == 0 || req.ttl_secs > MAX_TTL_SECS {
        return Err(ServiceError::invalid(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS}"
        )));
    }
    if req.uses == 0 || req.uses > MAX_USES {
        return Err(ServiceError::invalid(format!(
            "uses must be between 1 and {MAX_USES}"
        )));
    }
    if req.description.len() > MAX_DESCRIPTION {
        return Err(ServiceError::invalid(format!(
            "description must be at most {MAX_DESCRIPTION} bytes"
        )));
    }
    Ok(())
}

/// Creates a join token in `tokens` after checking the request; `ca` is the
/// fingerprint a joining host pins.
pub async fn create(
    tokens: &TokenStore,
    ca: &Fingerprint,
    req: &CreateToken,
) -> ServiceResult<CreatedTokenView> {
    check(req)?;
    let created = tokens
        .create(
            req.ttl_secs * 1000,
            req.uses,
            req.description.clone(),
            now(),
        )
        .await?;
    tracing::info!(token = %created.record.id, uses = req.uses, ttl_secs = req.ttl_secs, "join token created");
    Ok(CreatedTokenView {
        token: created.token,
        id: created.record.id,
        expires_ms: created.record.expires_ms,
        uses: created.record.max_uses,
        ca_sha256: ca.to_string(),
    })
}

impl Service {
    pub async fn create_join_token(
        &self,
        caller: &Caller,
        req: &CreateToken,
    ) -> ServiceResult<CreatedTokenView> {
        caller.admin()?;
        create(&self.app.tokens, &self.app.pki.ca.fingerprint(), req).await
    }

    pub fn list_join_tokens(&self, caller: &Caller) -> ServiceResult<Vec<JoinTokenView>> {
        caller.admin()?;
        let mut tokens: Vec<JoinTokenView> = self
            .app
            .tokens
            .list()?
            .into_iter()
            .map(JoinTokenView::from)
            .collect();
        tokens.sort_by_key(|t| t.created_ms);
        Ok(tokens)
    }

    pub async fn revoke_join_token(&self, caller: &Caller, id: &str) -> ServiceResult<()> {
        caller.admin()?;
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ServiceError::invalid("a token id is 8 hex digits"));
        }
        if self.app.tokens.revoke(id).await? {
            Ok(())
        } else {
            Err(ServiceError::not_found(format!("no join token {id}")))
        }
    }
}
