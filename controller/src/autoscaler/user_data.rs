//! The cloud-init user-data a created server boots with: it writes the agent's
//! enrolment settings and runs `packaging/cloud-init/cairn-firstboot.sh`, which (in
//! bootstrap mode) installs the agent's package from the controller, enrols, and
//! starts the agent. Pure: the template is compiled in, the values are checked.
//!
//! Every value lands in a shell environment file, so each is checked against a narrow
//! alphabet here rather than escaped: a value that could break out of its quotes is
//! refused, never rendered.

use serde::{Deserialize, Serialize};

/// The template, with `{{ NAME }}` slots.
const TEMPLATE: &str = include_str!("../../../packaging/cloud-init/user-data.yaml");
/// The first-boot script the user-data writes and runs.
const FIRSTBOOT: &str = include_str!("../../../packaging/cloud-init/cairn-firstboot.sh");

/// Nova refuses user-data above 65,535 bytes once base64-encoded.
pub const MAX_ENCODED: usize = 65_535;

/// How a created server gets the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The image has the `cairn-agent` package: only configure and start it.
    Bake,
    /// A plain image: install the package from the controller first.
    #[default]
    Bootstrap,
}

/// The agent's package as the controller serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// HTTPS URL on the controller.
    pub url: String,
    pub sha256: String,
}

/// Everything one server's user-data says.
#[derive(Debug, Clone)]
pub struct HostBoot<'a> {
    /// The link address the agent dials, `HOST:PORT`.
    pub controller: &'a str,
    pub ca_sha256: &'a str,
    pub ca_pem: &'a str,
    /// The one-use join token (a secret: it lives only in the user-data).
    pub token: &'a str,
    pub hostname: &'a str,
    pub labels: &'a [(String, String)],
    /// Bootstrap mode's package; `None` in bake mode.
    pub package: Option<&'a Package>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{what} {value:?} has characters a host's first-boot settings cannot carry (allowed: letters, digits and {allowed})")]
    Unsafe {
        what: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("the user-data is {0} bytes base64-encoded; Nova takes at most {MAX_ENCODED}")]
    TooLarge(usize),
}

/// Checks `value` against letters, digits and `extra`.
fn safe<'v>(
    what: &'static str,
    value: &'v str,
    extra: &'static str,
) -> Result<&'v str, RenderError> {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    {
        Ok(value)
    } else {
        Err(RenderError::Unsafe {
            what,
            value: value.to_string(),
            allowed: extra,
        })
    }
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Renders the user-data.
pub fn render(b: &HostBoot<'_>) -> Result<String, RenderError> {
    let mut env = String::new();
    let mut line = |k: &str, v: &str| env.push_str(&format!("{k}='{v}'\n"));
    line(
        "CAIRN_CONTROLLER",
        safe("the controller address", b.controller, ".:-[]")?,
    );
    line(
        "CAIRN_CA_SHA256",
        safe("the CA fingerprint", b.ca_sha256, ":")?,
    );
    line("CAIRN_HOSTNAME", safe("the host name", b.hostname, ".-_")?);
    let mut labels = vec![];
    for (k, v) in b.labels {
        labels.push(format!(
            "{}={}",
            safe("a label key", k, "._-/")?,
            safe("a label value", v, "._-/:")?
        ));
    }
    line("CAIRN_LABELS", &labels.join(" "));
    if let Some(p) = b.package {
        line(
            "CAIRN_PACKAGE_URL",
            safe("the package URL", &p.url, ".:/-_%~+")?,
        );
        line(
            "CAIRN_PACKAGE_SHA256",
            safe("the package hash", &p.sha256, "")?,
        );
    }
    // Last, so the script can delete the line once the token is spent.
    line("CAIRN_JOIN_TOKEN", safe("the join token", b.token, ".")?);
    let out = TEMPLATE
        .replace("{{ FIRSTBOOT_ENV }}", &quoted(&env))
        .replace("{{ CA_PEM }}", &quoted(b.ca_pem))
        .replace("{{ FIRSTBOOT_SCRIPT }}", &quoted(FIRSTBOOT));
    let encoded = out.len().div_ceil(3) * 4;
    if encoded > MAX_ENCODED {
        return Err(RenderError::TooLarge(encoded));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot<'a>(labels: &'a [(String, String)], package: Option<&'a Package>) -> HostBoot<'a> {
        HostBoot {
            controller: "203.0.113.5:7443",
            ca_sha256: "ab:cd",
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            token: "0123abcd.00112233445566778899aabbccddeeff",
            hostname: "cairn-cloud-1a2b",
            labels,
            package,
        }
    }

    #[test]
    fn renders_every_slot_as_yaml() {
        let labels = [("pool".to_string(), "cloud".to_string())];
        let pkg = Package {
            url: "https://cairn.example.org:7080/packages/cairn-agent.deb".into(),
            sha256: "ff".repeat(32),
        };
        let out = render(&boot(&labels, Some(&pkg))).expect("renders");
        assert!(out.starts_with("#cloud-config\n"));
        // Read back as cloud-init reads it, every file holds exactly what went in.
        let doc: serde_yaml::Value = serde_yaml::from_str(&out).expect("YAML");
        let file = |path: &str| -> String {
            doc["write_files"]
                .as_sequence()
                .expect("write_files")
                .iter()
                .find(|f| f["path"].as_str() == Some(path))
                .and_then(|f| f["content"].as_str())
                .unwrap_or_else(|| panic!("no {path}"))
                .to_string()
        };
        assert_eq!(
            file("/etc/cairn/firstboot.env"),
            format!(
                "CAIRN_CONTROLLER='203.0.113.5:7443'\nCAIRN_CA_SHA256='ab:cd'\n\
                 CAIRN_HOSTNAME='cairn-cloud-1a2b'\nCAIRN_LABELS='pool=cloud'\n\
                 CAIRN_PACKAGE_URL='https://cairn.example.org:7080/packages/cairn-agent.deb'\n\
                 CAIRN_PACKAGE_SHA256='{}'\n\
                 CAIRN_JOIN_TOKEN='0123abcd.00112233445566778899aabbccddeeff'\n",
                "ff".repeat(32)
            )
        );
        assert_eq!(file("/etc/cairn/ca.pem"), boot(&[], None).ca_pem);
        assert_eq!(file("/usr/local/lib/cairn/cairn-firstboot"), FIRSTBOOT);
        assert_eq!(
            doc["runcmd"][0][0].as_str(),
            Some("/usr/local/lib/cairn/cairn-firstboot")
        );
        // Bake mode names no package.
        let baked = render(&boot(&labels, None)).expect("renders");
        assert!(!baked.contains("CAIRN_PACKAGE_URL='"));
    }

    #[test]
    fn refuses_values_that_could_escape_their_quotes() {
        let labels = [("pool".to_string(), "x' ; rm -rf / '".to_string())];
        let e = render(&boot(&labels, None)).expect_err("refused");
        assert!(
            matches!(
                e,
                RenderError::Unsafe {
                    what: "a label value",
                    ..
                }
            ),
            "{e}"
        );
        let mut b = boot(&[], None);
        b.token = "a\nb";
        assert!(render(&b).is_err());
    }
}
