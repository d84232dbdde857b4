//! OpenID Connect login, the relying party's side: the issuer's discovery
//! document and keys, the authorization code flow with PKCE, and the ID token
//! checked (signature against the issuer's published keys, issuer, audience,
//! expiry, nonce) before any claim is read. What the claims mean for Cairn (the
//! account's name, its groups) is [`identity`], a pure function.
//!
//! A login in flight is remembered in memory by its `state` for ten minutes:
//! bounded, so a flood of started-and-abandoned logins costs a fixed amount of
//! memory, and forgotten by a restart (the user clicks "Log in" again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde_json::Value;

use crate::config::OidcConfig;

/// How long a started login may take at the provider.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Logins in flight at once; the oldest is dropped beyond it.
pub const MAX_PENDING: usize = 10_000;
/// How long the discovery document and keys are trusted before they are read
/// again (a provider rotating its keys is seen within this).
const METADATA_TTL: Duration = Duration::from_secs(600);
/// Every call to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Groups read from one ID token.
const MAX_GROUPS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("this sign-in link has expired or was already used; log in again")]
    UnknownState,
    #[error("the identity provider refused the login: {0}")]
    Refused(String),
    #[error("the identity provider could not be reached or answered wrongly: {0}")]
    Provider(String),
    #[error("the identity provider's ID token is not valid: {0}")]
    BadToken(String),
    #[error("{0}")]
    Claims(String),
}

/// Who the provider says logged in, as Cairn reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `{issuer}#{sub}`: the identity itself, stable whatever the user's name.
    pub external_id: String,
    /// The Cairn account name.
    pub user: String,
    /// The Cairn groups the provider's groups map to.
    pub groups: Vec<String>,
}

struct Pending {
    nonce: Nonce,
    verifier: PkceCodeVerifier,
    next: String,
    started: Instant,
}

/// The relying party for one provider.
pub struct Oidc {
    config: OidcConfig,
    http: openidconnect::reqwest::Client,
    metadata: tokio::sync::Mutex<Option<(CoreProviderMetadata, Instant)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            // The token endpoint must answer itself: a redirect there is refused
            // (the code and secret would follow it).
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .build()
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        Ok(Oidc {
            config,
            http,
            metadata: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// What the login page's button says.
    pub fn label(&self) -> &str {
        &self.config.label
    }

    /// The discovery document and keys, read again when older than
    /// [`METADATA_TTL`] or when `fresh`.
    async fn metadata(&self, fresh: bool) -> Result<CoreProviderMetadata, OidcError> {
        let mut m = self.metadata.lock().await;
        if let Some((meta, at)) = m.as_ref() {
            if !fresh && at.elapsed() < METADATA_TTL {
                return Ok(meta.clone());
            }
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| OidcError::Provider(format!("issuer: {e}")))?;
        let meta = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Provider(format!("discovery: {}", error_chain(&e))))?;
        *m = Some((meta.clone(), Instant::now()));
        Ok(meta)
    }

    fn client(
        &self,
        meta: CoreProviderMetadata,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        OidcError,
    > {
        let redirect = RedirectUrl::new(self.config.redirect_url.clone())
            .map_err(|e| OidcError::Provider(format!("redirect_url: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a login that returns to `next`: the provider's URL to send the
    /// browser to.
    pub async fn begin(&self, next: &str) -> Result<String, OidcError> {
        let client = self.client(self.metadata(false).await?)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.config.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .url();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if pending.len() >= MAX_PENDING {
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(
            state.secret().clone(),
            Pending {
                nonce,
                verifier,
                next: next.to_string(),
                started: Instant::now(),
            },
        );
        Ok(url.to_string())
    }

    /// Finishes the login `state` names with the provider's `code`: the
    /// identity, and where the user was going.
    pub async fn finish(&self, code: &str, state: &str) -> Result<(Identity, String), OidcError> {
        // A state is used once, whatever happens next.
        let p = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(state)
            .filter(|p| p.started.elapsed() < PENDING_TTL)
            .ok_or(OidcError::UnknownState)?;
        if code.is_empty() || code.len() > 4096 {
            return Err(OidcError::Refused("no authorization code".into()));
        }
        let client = self.client(self.metadata(false).await?)?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?
            .set_pkce_verifier(p.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Refused(format!("code exchange: {}", error_chain(&e))))?;
        let token = tokens
            .id_token()
            .ok_or_else(|| OidcError::BadToken("the token response has no ID token".into()))?;
        let verified = match token.claims(&client.id_token_verifier(), &p.nonce) {
            Ok(c) => c.clone(),
            // Perhaps the provider rotated its keys: read them again, once.
            Err(first) => {
                let client = self.client(self.metadata(true).await?)?;
                let verifier = client.id_token_verifier();
                let claims = token
                    .claims(&verifier, &p.nonce)
                    .map_err(|_| OidcError::BadToken(first.to_string()))?
                    .clone();
                claims
            }
        };
        // The claims Cairn maps are read from the token just verified.
        let payload = payload(&token.to_string())?;
        let external_id = format!(
            "{}#{}",
            verified.issuer().as_str(),
            verified.subject().as_str()
        );
        let identity = identity(&self.config, external_id, &payload).map_err(OidcError::Claims)?;
        Ok((identity, p.next))
    }
}

/// The JSON payload of a compact JWT (already verified by the caller).
fn payload(jwt: &str) -> Result<Value, OidcError> {
    let part = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| OidcError::BadToken("not a compact JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| OidcError::BadToken(format!("payload: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| OidcError::BadToken(format!("payload: {e}")))
}

/// What verified claims mean here: the account name (the configured claim,
/// lower-cased, a valid Cairn user name) and the Cairn groups the provider's
/// groups map to (unmapped ones are ignored).
pub fn identity(
    config: &OidcConfig,
    external_id: String,
    claims: &Value,
) -> Result<Identity, String> {
    let name = claims
        .get(&config.username_claim)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!(
                "the identity provider sent no {:?} claim to name your account; ask an admin",
                config.username_claim
            )
        })?
        .to_lowercase();
    if !super::accounts::valid_user_name(&name) {
        return Err(format!(
            "{name:?} (your {:?} at the identity provider) is not a possible user name here: 1-32 characters of a-z, 0-9, '.', '_' and '-', starting with a letter; ask an admin",
            config.username_claim
        ));
    }
    let groups = match claims.get(&config.groups_claim) {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(list)) => {
            let mut out: Vec<String> = list
                .iter()
                .take(MAX_GROUPS)
                .filter_map(Value::as_str)
                .filter_map(|g| config.groups.get(g).cloned())
                .collect();
            out.sort();
            out.dedup();
            out
        }
        Some(Value::String(g)) => config.groups.get(g).cloned().into_iter().collect(),
        Some(_) => {
            return Err(format!(
                "the identity provider's {:?} claim is not a list of names",
                config.groups_claim
            ))
        }
    };
    Ok(Identity {
        external_id,
        user: name,
        groups,
    })
}

/// An error with its sources, for the log and the page (the provider's reason
/// is usually two levels down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: "https://id.example.org".into(),
            client_id: "cairn".into(),
            client_secret: None,
            redirect_url: "https://cairn.example.org/login/oidc/callback".into(),
            label: "Example ID".into(),
            scopes: vec!["email".into()],
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            groups: [
                ("bio-students", "bio101"),
                ("bio-staff", "bio101"),
                ("chem", "chem2"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .into(),
        }
    }

    #[test]
    fn claims_map_to_a_user_and_groups() {
        let id = identity(
            &config(),
            "iss#1".into(),
            &json!({"preferred_username": "Alice", "groups": ["bio-students", "bio-staff", "unrelated", 7]}),
        )
        .unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.groups, vec!["bio101".to_string()]);
        assert_eq!(id.external_id, "iss#1");
        // A single group as a string, and no groups at all.
        let id = identity(
            &config(),
            "i#2".into(),
            &json!({"preferred_username": "bob", "groups": "chem"}),
        )
        .unwrap();
        assert_eq!(id.groups, vec!["chem2".to_string()]);
        let id = identity(
            &config(),
            "i#3".into(),
            &json!({"preferred_username": "carol"}),
        )
        .unwrap();
        assert!(id.groups.is_empty());
    }

    #[test]
    fn a_missing_or_impossible_name_or_odd_groups_are_refused_clearly() {
        let e = identity(&config(), "i".into(), &json!({"email": "a@b"})).unwrap_err();
        assert!(e.contains("no \"preferred_username\" claim"), "{e}");
        let e = identity(
            &config(),
            "i".into(),
            &json!({"preferred_username": "a b/../c"}),
        )
        .unwrap_err();
        assert!(e.contains("not a possible user name"), "{e}");
        let e = identity(
            &config(),
            "i".into(),
            &json!({"preferred_username": "ok", "groups": {"x": 1}}),
        )
        .unwrap_err();
        assert!(e.contains("not a list"), "{e}");
    }

    #[test]
    fn the_payload_of_a_compact_jwt_is_read() {
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"1"}"#);
        assert_eq!(payload(&format!("h.{body}.s")).unwrap()["sub"], "1");
        assert!(payload("nodots").is_err());
        assert!(payload("a.!!!.c").is_err());
    }

    #[tokio::test]
    async fn a_state_is_used_once_and_unknown_ones_are_refused() {
        let o = Oidc::new(config()).unwrap();
        assert!(matches!(
            o.finish("code", "never-issued").await,
            Err(OidcError::UnknownState)
        ));
    }
}
