//! The Debian packages of the controller, the agent and the CLI, for tests that
//! install them: made by `packaging/build-debs.sh` (cargo-deb, `--no-build`) from the
//! binaries the test build already made, so a test costs no release build.
//!
//! Packages are made once per version: threads of one test binary wait on a mutex,
//! test binaries on a lock directory ([`crate::images`]'s). Another process finds
//! them already made when the stamp beside them still matches their inputs (the
//! binaries, `packaging/`, the crates' manifests: path, size and time of each).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::images::BuildLock;
use crate::require::find_program;
use crate::vm::repo_path;

/// The three packages of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debs {
    /// cairn-agent_VERSION_ARCH.deb
    pub agent: PathBuf,
    /// cairn-controller_VERSION_ARCH.deb
    pub controller: PathBuf,
    /// cairn-cli_VERSION_ARCH.deb (the `cairn` command)
    pub cli: PathBuf,
    /// Their Debian version, e.g. `0.1.0-1`.
    pub version: String,
}

impl Debs {
    /// The three paths, controller first.
    pub fn all(&self) -> [&Path; 3] {
        [&self.controller, &self.agent, &self.cli]
    }
}

/// The packages at the workspace's version (Cargo's `0.1.0` is Debian's `0.1.0-1`).
pub fn debs() -> Debs {
    make(None)
}

/// The packages with Debian version `v` (e.g. `0.1.1-1`), for upgrade tests. The
/// binaries are the same as [`debs`]'s; only the version differs.
pub fn debs_with_version(v: &str) -> Debs {
    make(Some(v))
}

/// The pinned cargo-deb; keep in step with `packaging/build-debs.sh`.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Made packages of this process, by output directory.
static MADE: Mutex<BTreeMap<PathBuf, Debs>> = Mutex::new(BTreeMap::new());

/// `None` if `cargo deb` is installed at [`CARGO_DEB_VERSION`], else what is wrong
/// (for [`crate::require::Need::CargoDeb`]).
pub fn cargo_deb_missing() -> Option<String> {
    // cargo looks for subcommands on PATH and in $CARGO_HOME/bin.
    let home_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin").join("cargo-deb"));
    let program = find_program("cargo-deb").or_else(|| home_bin.filter(|p| p.is_file()));
    let Some(program) = program else {
        return Some("cargo-deb is not installed".into());
    };
    let out = Command::new(&program)
        .args(["deb", "--version"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            let v = v.split_whitespace().last().unwrap_or_default();
            (v != CARGO_DEB_VERSION).then(|| {
                format!(
                    "{} is cargo-deb {v}, not the pinned {CARGO_DEB_VERSION}",
                    program.display()
                )
            })
        }
        Ok(o) => Some(format!(
            "{} deb --version failed: {}",
            program.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", program.display())),
    }
}

/// The directory Cargo builds into, and the profile's directory in it, from where
/// the running test executable is (`TARGET/debug/deps/...`).
fn target_and_profile() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let target = dir
        .parent()
        .expect("the profile directory is in the target directory")
        .to_path_buf();
    (target, dir)
}

fn make(version: Option<&str>) -> Debs {
    let (target, profile_dir) = target_and_profile();
    // One directory per version, so an upgrade test's packages never replace the
    // ones another test is installing.
    let out_dir = target.join("debian").join(match version {
        None => "default".to_string(),
        Some(v) => format!(
            "v-{}",
            v.chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                })
                .collect::<String>()
        ),
    });
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = made.get(&out_dir) {
        return d.clone();
    }
    let _across_processes = BuildLock::acquire(&format!("debs-{}", out_dir.display()));
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let stamp = out_dir.join(".inputs");
    let inputs = inputs_fingerprint(&profile_dir, version);
    let debs = match (std::fs::read_to_string(&stamp), find_debs(&out_dir)) {
        (Ok(s), Some(d)) if s == inputs => d,
        _ => {
            let _ = std::fs::remove_dir_all(&out_dir);
            std::fs::create_dir_all(&out_dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));
            let mut cmd = Command::new("bash");
            cmd.arg(repo_path("packaging/build-debs.sh"))
                .args(["--profile", &profile, "--output"])
                .arg(&out_dir)
                // Test packages are made and thrown away: light compression.
                .arg("--fast");
            if let Some(v) = version {
                cmd.args(["--deb-version", v]);
            }
            let started = std::time::Instant::now();
            let out = cmd
                .stdin(Stdio::null())
                .output()
                .expect("run packaging/build-debs.sh");
            assert!(
                out.status.success(),
                "packaging/build-debs.sh failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let debs = find_debs(&out_dir).unwrap_or_else(|| {
                panic!(
                    "build-debs.sh made no three packages in {}:\n{}",
                    out_dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            eprintln!(
                "made the packages {} in {:.1} s",
                debs.version,
                started.elapsed().as_secs_f64()
            );
            std::fs::write(&stamp, &inputs).expect("write the packages' stamp");
            debs
        }
    };
    if let Some(v) = version {
        assert_eq!(debs.version, v, "the packages' version");
    }
    made.insert(out_dir, debs.clone());
    debs
}

/// The three packages in `dir` and their version, if all three are there.
fn find_debs(dir: &Path) -> Option<Debs> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    let find = |pkg: &str| {
        let prefix = format!("{pkg}_");
        files
            .iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .cloned()
    };
    let controller = find("cairn-controller")?;
    // cairn-controller_0.1.0-1_amd64.deb: the version is the middle field.
    let version = controller
        .file_name()?
        .to_string_lossy()
        .split('_')
        .nth(1)?
        .to_string();
    Some(Debs {
        agent: find("cairn-agent")?,
        controller,
        cli: find("cairn-cli")?,
        version,
    })
}

/// What the packages are made from, as text: each input's path, size and time.
fn inputs_fingerprint(profile_dir: &Path, version: Option<&str>) -> String {
    let mut files: Vec<PathBuf> = ["cairn-controller", "cairn-agent", "cairn"]
        .iter()
        .map(|b| profile_dir.join(b))
        .collect();
    for rel in [
        "controller/Cargo.toml",
        "agent/Cargo.toml",
        "cli/Cargo.toml",
        "Cargo.toml",
    ] {
        files.push(repo_path(rel));
    }
    let mut stack = vec![repo_path("packaging")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut text = format!("version {version:?}\n");
    for f in files {
        let (len, mtime) = std::fs::metadata(&f)
            .map(|m| {
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (m.len(), t)
            })
            .unwrap_or((0, 0));
        text.push_str(&format!("{} {len} {mtime}\n", f.display()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_three_packages_and_their_version() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_debs(dir.path()), None);
        for f in [
            "cairn-controller_0.2.0-1_amd64.deb",
            "cairn-agent_0.2.0-1_amd64.deb",
            "cairn-cli_0.2.0-1_amd64.deb",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let d = find_debs(dir.path()).unwrap();
        assert_eq!(d.version, "0.2.0-1");
        assert!(d.agent.ends_with("cairn-agent_0.2.0-1_amd64.deb"));
        assert!(d.cli.ends_with("cairn-cli_0.2.0-1_amd64.deb"));
    }

    #[test]
    fn the_pin_matches_the_build_script() {
        let script = std::fs::read_to_string(repo_path("packaging/build-debs.sh")).unwrap();
        assert!(
            script.contains(&format!("CARGO_DEB_VERSION={CARGO_DEB_VERSION}\n")),
            "packaging/build-debs.sh pins another cargo-deb"
        );
    }
}
