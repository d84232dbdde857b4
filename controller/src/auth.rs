//! Secrets the controller hands out: the admin API token and join tokens are random,
//! shown once, and stored only as SHA-256 digests compared in constant time.

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

#[cfg(test)]
mod tests {
    use super::*;

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
