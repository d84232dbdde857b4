//! What a test needs from the machine, and the one rule for when it is missing.
//!
//! A test that needs something beyond Rust starts with
//! `if !require(&[Need::Docker]) { return; }`. A missing need FAILS the test, naming
//! what is missing and how to install it: a test that could not run never counts as
//! passed.
//!
//! The only way around is explicit: `CAIRN_TEST_SKIP` lists, comma-separated, the
//! needs whose tests the developer chooses not to run ([`Need::name`]: `docker`,
//! `chromium`, `registry`, `jupyter`, `oidc`, `nginx`, `vm`, `cargo-deb`, `ansible`, `openstack`, `etcd`). Such a test prints one line,
//! `SKIPPED (needs docker): <test name>`, past the test harness's output capture so it
//! always shows (`.ci/run` counts these lines), and returns. Under `CI=true` a
//! non-empty `CAIRN_TEST_SKIP` is itself a failure: CI skips nothing.

use std::io::Write;
use std::path::PathBuf;

use crate::docker::docker_server_version;
use crate::images::{image_exists, JUPYTER_TAG};

/// The variable naming the needs whose tests to skip.
pub const SKIP_VAR: &str = "CAIRN_TEST_SKIP";

/// The start of every skip line, for `grep`.
pub const SKIP_MARK: &str = "SKIPPED (needs ";

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A reachable Docker Engine and its `docker` CLI.
    Docker,
    /// Headless Chromium and chromedriver, for the browser test.
    Chromium,
    /// Debian's `docker-registry` binary, for tests against a real registry.
    Registry,
    /// The JupyterLab test image, or `debootstrap` to build it.
    Jupyter,
    /// Python 3 with `venv`, to run the OpenID Connect provider from PyPI.
    Oidc,
    /// Debian's nginx, as the trusted front proxy.
    Nginx,
    /// The systemd "VM" test image ([`crate::vm`]), or `debootstrap` to build it.
    Vm,
    /// `cargo deb` (cargo-deb), to make the Debian packages ([`crate::debs`]).
    CargoDeb,
    /// `ansible-playbook` and `ansible-lint` (Debian's), and an SSH client.
    Ansible,
    /// The mini OpenStack test image ([`crate::openstack`]), or `debootstrap` and
    /// `unshare` to build it.
    OpenStack,
    /// Debian's `etcd-server` (the `etcd` binary), for the etcd store engine.
    Etcd,
}

impl Need {
    pub const ALL: [Need; 11] = [
        Need::Docker,
        Need::Chromium,
        Need::Registry,
        Need::Jupyter,
        Need::Oidc,
        Need::Nginx,
        Need::Vm,
        Need::CargoDeb,
        Need::Ansible,
        Need::OpenStack,
        Need::Etcd,
    ];

    /// Its name in `CAIRN_TEST_SKIP` and in the skip line.
    pub fn name(self) -> &'static str {
        match self {
            Need::Docker => "docker",
            Need::Chromium => "chromium",
            Need::Registry => "registry",
            Need::Jupyter => "jupyter",
            Need::Oidc => "oidc",
            Need::Nginx => "nginx",
            Need::Vm => "vm",
            Need::CargoDeb => "cargo-deb",
            Need::Ansible => "ansible",
            Need::OpenStack => "openstack",
            Need::Etcd => "etcd",
        }
    }

    /// How to get it on Debian.
    fn remedy(self) -> &'static str {
        match self {
            Need::Docker => {
                "install and start the Docker Engine (systemctl start docker) or set DOCKER_HOST"
            }
            Need::Chromium => "apt-get install chromium chromium-driver",
            Need::Registry => "apt-get install docker-registry",
            Need::Jupyter => {
                "apt-get install debootstrap (the image is built from Debian and PyPI on first use)"
            }
            Need::Oidc => "apt-get install python3 python3-venv (the provider comes from PyPI)",
            Need::Nginx => "apt-get install nginx",
            Need::Vm => {
                "apt-get install debootstrap (the image is built from Debian on first use)"
            }
            Need::CargoDeb => {
                "bash packaging/build-debs.sh --install-only (cargo install cargo-deb --version 3.8.0 --locked)"
            }
            Need::Ansible => "apt-get install ansible-core ansible-lint openssh-client",
            Need::Etcd => "apt-get install etcd-server",
            Need::OpenStack => {
                "apt-get install debootstrap util-linux (the image is built from Debian's OpenStack packages on first use, ~5 min)"
            }
        }
    }

    /// `None` if the machine has it, else what is missing.
    fn missing(self) -> Option<String> {
        let program = |name: &str| {
            find_program(name)
                .is_none()
                .then(|| format!("{name} is not on PATH"))
        };
        match self {
            Need::Docker => docker_server_version()
                .err()
                .map(|e| format!("no Docker Engine ({e})")),
            Need::Chromium => {
                let gone: Vec<String> = [CHROMIUM, CHROMEDRIVER]
                    .into_iter()
                    .filter_map(program)
                    .collect();
                (!gone.is_empty()).then(|| gone.join("; "))
            }
            Need::Registry => program(REGISTRY),
            // A built image needs nothing more; building one needs debootstrap.
            Need::Jupyter if image_exists(JUPYTER_TAG) => None,
            Need::Jupyter => program(DEBOOTSTRAP)
                .map(|m| format!("{m} and the image {JUPYTER_TAG} is not built")),
            // As for Jupyter: a built image needs nothing more.
            Need::Vm if image_exists(crate::vm::VM_TAG) => None,
            Need::Vm => program(DEBOOTSTRAP)
                .map(|m| format!("{m} and the image {} is not built", crate::vm::VM_TAG)),
            Need::CargoDeb => crate::debs::cargo_deb_missing(),
            Need::OpenStack if image_exists(crate::openstack::OPENSTACK_TAG) => None,
            Need::OpenStack => {
                let gone: Vec<String> = [DEBOOTSTRAP, "unshare"]
                    .into_iter()
                    .filter_map(program)
                    .collect();
                (!gone.is_empty()).then(|| {
                    format!(
                        "{} and the image {} is not built",
                        gone.join("; "),
                        crate::openstack::OPENSTACK_TAG
                    )
                })
            }
            Need::Ansible => {
                let gone: Vec<String> = ["ansible-playbook", "ansible-lint", "ssh", "ssh-keygen"]
                    .into_iter()
                    .filter_map(program)
                    .collect();
                (!gone.is_empty()).then(|| gone.join("; "))
            }
            Need::Etcd => program("etcd"),
            Need::Nginx => nginx_program()
                .is_none()
                .then(|| "nginx is not on PATH or in /usr/sbin".into()),
            Need::Oidc => {
                let python = if std::path::Path::new("/usr/bin/python3").exists() {
                    Some("/usr/bin/python3".to_string())
                } else {
                    find_program("python3").map(|p| p.display().to_string())
                };
                match python {
                    None => Some("python3 is not on PATH".into()),
                    Some(p) => {
                        let ok = std::process::Command::new(&p)
                            .args(["-c", "import ensurepip, venv"])
                            .output()
                            .is_ok_and(|o| o.status.success());
                        (!ok).then(|| format!("{p} has no venv/ensurepip module"))
                    }
                }
            }
        }
    }
}

/// Chromium's program name (Debian's `chromium`).
pub const CHROMIUM: &str = "chromium";
/// chromedriver's program name (Debian's `chromium-driver`).
pub const CHROMEDRIVER: &str = "chromedriver";
/// The registry's program name (Debian's `docker-registry`).
pub const REGISTRY: &str = "docker-registry";
/// debootstrap's program name.
const DEBOOTSTRAP: &str = "debootstrap";

/// nginx: on `PATH`, or where Debian puts it (`/usr/sbin`, not on a user's PATH).
pub fn nginx_program() -> Option<PathBuf> {
    find_program("nginx").or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.is_file().then_some(p)
    })
}

/// The file `name` resolves to on `PATH`, if any.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether this run is CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The needs `CAIRN_TEST_SKIP` names; panics on a name it does not know and, under
/// `CI=true`, on any name at all.
fn skipped_needs() -> Vec<Need> {
    let raw = std::env::var(SKIP_VAR).unwrap_or_default();
    parse_skip(&raw, in_ci()).unwrap_or_else(|e| panic!("{e}"))
}

/// The needs a `CAIRN_TEST_SKIP` value names, or why it is refused.
fn parse_skip(raw: &str, ci: bool) -> Result<Vec<Need>, String> {
    let names: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if ci && !names.is_empty() {
        return Err(format!(
            "CI=true but {SKIP_VAR}={raw:?}: CI runs every test; unset {SKIP_VAR}"
        ));
    }
    names
        .into_iter()
        .map(|n| {
            Need::ALL
                .into_iter()
                .find(|need| need.name() == n)
                .ok_or_else(|| {
                    format!(
                        "{SKIP_VAR} names {n:?}, which is not a need; known: {}",
                        Need::ALL.map(Need::name).join(", ")
                    )
                })
        })
        .collect()
}

/// The running test's name: the harness names each test's thread after it.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_string()
}

/// True if the test may run: the machine has every need. False (after printing the
/// skip line) if `CAIRN_TEST_SKIP` names one of them. Panics, naming what is missing
/// and how to install it, otherwise.
pub fn require(needs: &[Need]) -> bool {
    let skipped = skipped_needs();
    if let Some(need) = needs.iter().find(|n| skipped.contains(n)) {
        // Straight to the process's stderr: the harness captures `eprintln!` of a
        // passing test, and this line must always be seen and counted.
        let line = format!("{SKIP_MARK}{}): {}\n", need.name(), test_name());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        return false;
    }
    let missing: Vec<String> = needs
        .iter()
        .filter_map(|n| {
            n.missing()
                .map(|m| format!("{}: {m}; {}", n.name(), n.remedy()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "this test needs what the machine lacks:\n  {}\n(to skip such tests on purpose, set {SKIP_VAR} to a comma-separated list of: {}; CI skips nothing)",
        missing.join("\n  "),
        Need::ALL.map(Need::name).join(", ")
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skip_list_names_needs_and_ci_allows_none() {
        assert_eq!(parse_skip("", false), Ok(vec![]));
        assert_eq!(parse_skip(" , ", true), Ok(vec![]));
        assert_eq!(
            parse_skip(
                "docker, chromium,registry,jupyter,oidc,nginx,vm,cargo-deb,ansible,openstack,etcd",
                false
            ),
            Ok(Need::ALL.to_vec())
        );
        let typo = parse_skip("docker,chrome", false).unwrap_err();
        assert!(typo.contains("\"chrome\", which is not a need"), "{typo}");
        assert!(
            typo.contains("docker, chromium, registry, jupyter"),
            "{typo}"
        );
        let ci = parse_skip("registry", true).unwrap_err();
        assert!(
            ci.starts_with("CI=true but CAIRN_TEST_SKIP=\"registry\""),
            "{ci}"
        );
    }

    #[test]
    fn programs_are_found_on_path_only() {
        assert!(find_program("sh").is_some());
        assert!(find_program("cairn-no-such-program").is_none());
    }
}
