//! Login by a trusted front proxy's header: whether a connection comes from a
//! trusted proxy, and which account the header names. Pure: the service
//! decides what a login then means.

use std::net::IpAddr;

use crate::config::ProxyIdentity;

/// Longest header value considered (a certificate subject can be long, not
/// this long).
pub const MAX_HEADER: usize = 2048;

/// Whether `peer` is one of the `trusted` proxies.
pub fn trusted(trusted: &[ipnet::IpNet], peer: Option<IpAddr>) -> bool {
    peer.is_some_and(|p| {
        // An IPv4 peer on a dual-stack listener arrives as ::ffff:a.b.c.d.
        let p = match p {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(p),
            v4 => v4,
        };
        trusted.iter().any(|n| n.contains(&p))
    })
}

/// The account name a header value stands for: the value itself, or a
/// certificate subject's CN; lower-cased and checked as a user name.
pub fn account_name(format: ProxyIdentity, value: &str) -> Result<String, String> {
    if value.len() > MAX_HEADER {
        return Err("the front proxy's identity header is too long".into());
    }
    let name = match format {
        ProxyIdentity::User => value.trim().to_string(),
        ProxyIdentity::X509Subject => common_name(value)
            .ok_or_else(|| format!("the certificate subject {value:?} has no CN"))?,
    }
    .to_lowercase();
    if !super::accounts::valid_user_name(&name) {
        return Err(format!(
            "{name:?}, as the front proxy names you, is not a possible user name here: 1-32 characters of a-z, 0-9, '.', '_' and '-', starting with a letter; ask an admin"
        ));
    }
    Ok(name)
}

/// The CN of a distinguished name as nginx and Apache print it: RFC 2253
/// (`CN=alice,O=Uni`, backslash escapes) or the older slash form
/// (`/O=Uni/CN=alice`). The most specific CN (RFC 2253 lists it first).
fn common_name(dn: &str) -> Option<String> {
    let dn = dn.trim();
    let parts: Vec<String> = if let Some(rest) = dn.strip_prefix('/') {
        rest.split('/').map(str::to_string).collect()
    } else {
        // Split on commas that are not escaped.
        let mut parts = vec![String::new()];
        let mut chars = dn.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        parts.last_mut()?.push(n);
                    }
                }
                ',' | '+' => parts.push(String::new()),
                c => parts.last_mut()?.push(c),
            }
        }
        parts
    };
    let cns: Vec<String> = parts
        .iter()
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("CN")
                .then(|| v.trim().to_string())
        })
        .collect();
    // The slash form lists the most specific part last, RFC 2253 first.
    if dn.starts_with('/') {
        cns.last()
    } else {
        cns.first()
    }
    .filter(|v| !v.is_empty())
    .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_proxies_are_trusted() {
        let nets: Vec<ipnet::IpNet> = vec![
            "127.0.0.2/32".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ];
        assert!(trusted(&nets, Some("127.0.0.2".parse().unwrap())));
        assert!(trusted(&nets, Some("10.1.200.3".parse().unwrap())));
        assert!(trusted(&nets, Some("::ffff:127.0.0.2".parse().unwrap())));
        assert!(!trusted(&nets, Some("127.0.0.1".parse().unwrap())));
        assert!(!trusted(&nets, None));
    }

    #[test]
    fn names_come_from_the_header_or_the_subject_cn() {
        use ProxyIdentity::*;
        assert_eq!(account_name(User, " Alice ").unwrap(), "alice");
        assert_eq!(
            account_name(X509Subject, "CN=Alice,OU=Physics,O=Uni").unwrap(),
            "alice"
        );
        assert_eq!(
            account_name(X509Subject, "/C=FI/O=Uni/CN=bob").unwrap(),
            "bob"
        );
        assert_eq!(
            account_name(X509Subject, "emailAddress=x@y,CN=carol").unwrap(),
            "carol"
        );
        // An escaped comma is part of a value, not a separator.
        assert!(account_name(X509Subject, "CN=Doe\\, John,O=Uni")
            .unwrap_err()
            .contains("not a possible user name"));
        assert!(account_name(X509Subject, "O=Uni,OU=x")
            .unwrap_err()
            .contains("no CN"));
        assert!(account_name(User, "").is_err());
        assert!(account_name(User, &"a".repeat(MAX_HEADER + 1))
            .unwrap_err()
            .contains("too long"));
    }
}
