//! Datasets: named trees of files pushed by admins (course material), stored as
//! chunks and manifests in the chunk store, each push an immutable numbered version.
//!
//! * [`catalog`] — the versions in the store, commit (validate the manifest, check
//!   every chunk is present, record), resolve `NAME[@V]`, list, remove; and the live
//!   set the chunk collector keeps.
//! * [`lookup`] — the catalogue as launches and blueprint saves see it: the check a
//!   blueprint's datasets pass, and `latest` fixed to a version at launch.
//! * [`prefetch`] — which versions each host should hold before anyone launches.

pub mod catalog;
pub mod lookup;
pub mod prefetch;

pub use catalog::{Committed, DatasetRecord, DatasetVersion, Datasets, DatasetsError};

/// The largest encoded manifest a commit may send: the manifest limits' own.
pub fn max_manifest_bytes() -> usize {
    cairn_shared::chunks::manifest::Limits::DEFAULT.max_encoded_bytes
}

/// Whether `s` is a dataset name: the rule of blueprint names (1–63 of `a-z 0-9 -`,
/// starting with a letter, not ending with `-`).
pub fn valid_name(s: &str) -> bool {
    crate::blueprints::spec::valid_name(s)
}

/// The words of [`valid_name`], for error messages.
pub const NAME_RULE: &str =
    "1-63 characters of a-z, 0-9 and '-', starting with a letter, not ending with '-'";

/// A version as users write it: `NAME` or `NAME@latest` (the latest), `NAME@3`.
pub fn parse_ref(s: &str) -> Result<(&str, Option<u32>), String> {
    let (name, version) = match s.split_once('@') {
        None => (s, None),
        Some((n, "latest")) => (n, None),
        // Canonical numbers only ("03" and "+3" are refused): one version, one spelling.
        Some((n, text)) => match text.parse::<u32>() {
            Ok(v) if v >= 1 && v.to_string() == text => (n, Some(v)),
            _ => {
                return Err(format!(
                    "{s:?}: a version is a whole number from 1 or 'latest' (NAME@3, NAME@latest)"
                ))
            }
        },
    };
    if !valid_name(name) {
        return Err(format!("{name:?}: a dataset name is {NAME_RULE}"));
    }
    Ok((name, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        assert_eq!(parse_ref("physics").unwrap(), ("physics", None));
        assert_eq!(parse_ref("physics@latest").unwrap(), ("physics", None));
        assert_eq!(parse_ref("physics@3").unwrap(), ("physics", Some(3)));
        assert!(parse_ref("physics@0").is_err());
        assert!(parse_ref("physics@-1").is_err());
        assert!(parse_ref("physics@").is_err());
        assert!(parse_ref("physics@03").is_err());
        assert!(parse_ref("Physics").is_err());
        assert!(parse_ref("@3").is_err());
    }
}
