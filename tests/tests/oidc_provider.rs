//! The test OpenID Connect provider (tests/oidc: PyPI's django-oidc-provider) serves
//! what Cairn's login relies on: discovery naming its issuer, RS256 keys, and the
//! authorization code flow with PKCE (S256) whose ID token carries `email` and the
//! user's `groups` — all over plain HTTP, the login form filled in like a browser.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::{json, Value};

use cairn_tests::cluster::free_tcp_port;
use cairn_tests::oidc::{
    jwt_header, jwt_payload, pkce_challenge, pkce_verifier, OidcProvider, OidcUser,
};
use cairn_tests::require::{require, Need};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_serves_the_code_flow_with_pkce_and_groups() {
    if !require(&[Need::Oidc]) {
        return;
    }
    let users = [
        OidcUser::new(
            "alice",
            "alice-pw",
            "alice@example.test",
            &["staff", "physics"],
        ),
        OidcUser::new("bob", "bob-pw", "bob@example.test", &[]),
    ];
    // Nothing listens there: the flow ends at the redirect, read but not followed.
    let redirect = format!("http://127.0.0.1:{}/auth/callback", free_tcp_port());
    let started = std::time::Instant::now();
    let provider = OidcProvider::start(&users, std::slice::from_ref(&redirect))
        .await
        .unwrap_or_else(|e| panic!("starting the OIDC provider: {e:#}"));
    eprintln!("provider up in {:.1} s", started.elapsed().as_secs_f64());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Discovery and keys.
    let doc: Value = http
        .get(provider.discovery_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], provider.issuer.as_str());
    assert_eq!(
        doc["authorization_endpoint"],
        provider.authorization_endpoint()
    );
    assert_eq!(doc["token_endpoint"], provider.token_endpoint());
    assert_eq!(doc["userinfo_endpoint"], provider.userinfo_endpoint());
    assert_eq!(doc["jwks_uri"], provider.jwks_uri());
    let jwks: Value = http
        .get(doc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().expect("a JWKS");
    let rsa: Vec<&Value> = keys.iter().filter(|k| k["kty"] == "RSA").collect();
    assert!(!rsa.is_empty(), "no RSA key in {jwks}");
    for k in &rsa {
        assert_eq!(k["alg"], "RS256", "{k}");
        assert!(
            k["n"].is_string() && k["e"].is_string() && k["kid"].is_string(),
            "{k}"
        );
    }

    // A wrong password is refused on the login page.
    let verifier = pkce_verifier();
    let authorize = provider.authorize_url(
        &redirect,
        "openid email groups",
        "state-1",
        "nonce-1",
        &pkce_challenge(&verifier),
    );
    let refused = provider
        .log_in(&authorize, "alice", "not-her-password")
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("refused the login"),
        "{refused:#}"
    );

    // The code flow: login form, then straight back (no consent) with a code.
    let back = provider
        .log_in(&authorize, "alice", "alice-pw")
        .await
        .unwrap_or_else(|e| panic!("logging in: {e:#}"));
    assert!(back.as_str().starts_with(&redirect), "{back}");
    let query: std::collections::HashMap<String, String> =
        back.query_pairs().into_owned().collect();
    assert_eq!(
        query.get("state").map(String::as_str),
        Some("state-1"),
        "{back}"
    );
    let code = query
        .get("code")
        .unwrap_or_else(|| panic!("no code in {back}"));

    // PKCE is enforced: a wrong verifier gets nothing (and leaves the code unused).
    let wrong = provider
        .exchange_code(code, &redirect, &pkce_verifier())
        .await
        .unwrap_err();
    assert!(format!("{wrong:#}").contains("invalid_grant"), "{wrong:#}");

    let tokens = provider
        .exchange_code(code, &redirect, &verifier)
        .await
        .unwrap_or_else(|e| panic!("exchanging the code: {e:#}"));
    let id_token = tokens["id_token"].as_str().expect("an id_token");
    let header = jwt_header(id_token).unwrap();
    assert_eq!(header["alg"], "RS256", "{header}");
    assert!(
        rsa.iter().any(|k| k["kid"] == header["kid"]),
        "the ID token's kid {} is not in the JWKS",
        header["kid"]
    );
    let claims = jwt_payload(id_token).unwrap();
    assert_eq!(claims["iss"], provider.issuer.as_str(), "{claims}");
    assert_eq!(claims["aud"], provider.client_id.as_str(), "{claims}");
    assert_eq!(claims["nonce"], "nonce-1", "{claims}");
    assert_eq!(claims["email"], "alice@example.test", "{claims}");
    assert_eq!(claims["groups"], json!(["physics", "staff"]), "{claims}");

    // The code is single-use.
    let again = provider
        .exchange_code(code, &redirect, &verifier)
        .await
        .unwrap_err();
    assert!(format!("{again:#}").contains("invalid_grant"), "{again:#}");

    // Userinfo says the same with the access token.
    let info: Value = http
        .get(provider.userinfo_endpoint())
        .bearer_auth(tokens["access_token"].as_str().expect("an access_token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], claims["sub"], "{info}");
    assert_eq!(info["email"], "alice@example.test", "{info}");
    assert_eq!(info["groups"], json!(["physics", "staff"]), "{info}");

    // A user in no group gets an empty list, not a missing claim.
    let verifier = pkce_verifier();
    let authorize = provider.authorize_url(
        &redirect,
        "openid email profile groups",
        "state-2",
        "nonce-2",
        &pkce_challenge(&verifier),
    );
    let back = provider.log_in(&authorize, "bob", "bob-pw").await.unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {back}"));
    let tokens = provider
        .exchange_code(&code, &redirect, &verifier)
        .await
        .unwrap();
    let claims = jwt_payload(tokens["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["email"], "bob@example.test", "{claims}");
    assert_eq!(claims["groups"], json!([]), "{claims}");
    assert_eq!(claims["preferred_username"], "bob", "{claims}");
}
