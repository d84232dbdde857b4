//! Validated identifiers.
//!
//! Identifiers arrive from the network, from certificates and from URLs, so every one
//! is parsed through a constructor that checks its shape before the rest of the code
//! sees it.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind} id {value:?} is malformed: expected {expected}")]
pub struct IdError {
    kind: &'static str,
    value: String,
    expected: &'static str,
}

/// A host's identity: the subject of its client certificate, `h-` followed by 16
/// lowercase hex digits.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);

impl HostId {
    const PREFIX: &'static str = "h-";
    const HEX_LEN: usize = 16;

    /// A fresh random host id.
    pub fn generate() -> Self {
        let n: u64 = rand::rng().random();
        HostId(format!("{}{:016x}", Self::PREFIX, n))
    }

    /// Parses and validates a host id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = s.len() == Self::PREFIX.len() + Self::HEX_LEN
            && s.starts_with(Self::PREFIX)
            && s[Self::PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(HostId(s.to_owned()))
        } else {
            Err(IdError {
                kind: "host",
                value: s.chars().take(64).collect(),
                expected: "\"h-\" and 16 lowercase hex digits",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        HostId::parse(&s)
    }
}

impl From<HostId> for String {
    fn from(id: HostId) -> String {
        id.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An instance's identity: `i-` followed by 16 lowercase hex digits.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    pub fn generate() -> Self {
        let n: u64 = rand::rng().random();
        InstanceId(format!("i-{n:016x}"))
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = s.len() == 18
            && s.starts_with("i-")
            && s[2..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(InstanceId(s.to_owned()))
        } else {
            Err(IdError {
                kind: "instance",
                value: s.chars().take(64).collect(),
                expected: "\"i-\" and 16 lowercase hex digits",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstanceId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        InstanceId::parse(&s)
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse() {
        for _ in 0..100 {
            let id = HostId::generate();
            assert_eq!(HostId::parse(id.as_str()), Ok(id));
        }
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "h-",
            "h-0123",
            "x-0123456789abcdef",
            "h-0123456789ABCDEF",
            "h-0123456789abcdeg",
            "h-0123456789abcdef0",
        ] {
            assert!(HostId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn instance_ids() {
        let id = InstanceId::generate();
        assert_eq!(InstanceId::parse(id.as_str()), Ok(id));
        assert!(InstanceId::parse("i-xyz").is_err());
        assert!(InstanceId::parse("h-0123456789abcdef").is_err());
    }

    #[test]
    fn serde_rejects_malformed_ids() {
        let bytes = postcard::to_stdvec(&"../../etc/passwd".to_string()).expect("encode");
        assert!(postcard::from_bytes::<HostId>(&bytes).is_err());
    }
}
