//! The `cairn` binary against a real controller process: logging in and the config
//! file, roles and exit codes, blueprint files and field errors, `--json`, an
//! unreachable controller, and shell completions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cairn_tests::cluster::{free_tcp_port, Controller, ControllerOptions};
use serde_json::Value;

/// How `cairn` is run: who it is and where its config file lives.
struct Cairn {
    url: String,
    token: Option<String>,
    config: PathBuf,
}

impl Cairn {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(args)
            .env_remove("CAIRN_URL")
            .env_remove("CAIRN_TOKEN")
            .env_remove("XDG_CONFIG_HOME")
            .env("CAIRN_CONFIG", &self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !self.url.is_empty() {
            cmd.env("CAIRN_URL", &self.url);
        }
        if let Some(t) = &self.token {
            cmd.env("CAIRN_TOKEN", t);
        }
        let mut child = cmd.spawn().expect("run cairn");
        {
            let mut input = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).expect("write stdin");
            }
        }
        child.wait_with_output().expect("wait for cairn")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "cairn {args:?} failed ({:?}): {}{}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// Runs and expects exit `code`; returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        self.fails_with(args, None, code)
    }

    /// Runs with `stdin` and expects exit `code`; returns stderr.
    fn fails_with(&self, args: &[&str], stdin: Option<&str>, code: i32) -> String {
        let out = self.run(args, stdin);
        assert_eq!(
            out.status.code(),
            Some(code),
            "cairn {args:?}: stdout {} stderr {}",
            stdout(&out),
            stderr(&out)
        );
        stderr(&out)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the error report is the single line `error: ...` and returns it.
fn one_error_line(err: &str) -> &str {
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    err.trim_end()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_cli_against_a_real_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    let admin = Cairn {
        url: ctl.api.clone(),
        token: Some(ctl.admin_token.clone()),
        config: tmp.path().join("admin-config.toml"),
    };
    let alice_config = tmp.path().join("alice").join("cairn").join("config.toml");
    // Alice's URL comes from her config file after login, not from the environment.
    let alice = Cairn {
        url: String::new(),
        token: None,
        config: alice_config.clone(),
    };

    // The admin creates alice, password on stdin.
    let out = admin.ok(
        &["users", "create", "alice", "--password-stdin"],
        Some("alice-password-1\n"),
    );
    assert_eq!(out, "created user alice (user)\n");
    let err = admin.fails_with(
        &["users", "create", "alice", "--password-stdin"],
        Some("another-password\n"),
        6,
    );
    assert!(one_error_line(&err).contains("already exists"), "{err}");
    let users = admin.ok(&["users"], None);
    assert!(users.starts_with("NAME "), "{users}");
    assert!(users.contains("alice"), "{users}");

    // Not logged in yet: exit 3, one line.
    let err = alice.fails(&["whoami"], 3);
    assert!(one_error_line(&err).contains("not logged in"), "{err}");

    // A wrong password: 401 from the API, exit 3, and no config file.
    let login = Cairn {
        url: ctl.api.clone(),
        ..alice_like(&alice)
    };
    let out = login.run(
        &["login", "--user", "alice", "--password-stdin"],
        Some("wrong-password\n"),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    one_error_line(&stderr(&out));
    assert!(!alice_config.exists());

    // Log in: the config file holds the URL and a token, mode 0600.
    let out = login.ok(
        &["login", "--user", "alice", "--password-stdin"],
        Some("alice-password-1\n"),
    );
    assert!(
        out.starts_with(&format!("logged in to {} as alice (user)", ctl.api)),
        "{out}"
    );
    let mode = std::fs::metadata(&alice_config)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(&alice_config).unwrap()).unwrap();
    assert_eq!(saved["url"].as_str(), Some(ctl.api.as_str()));
    assert!(saved["token"].as_str().is_some_and(|t| !t.is_empty()));

    // whoami, human and JSON.
    let out = alice.ok(&["whoami"], None);
    assert!(out.starts_with("alice (user)"), "{out}");
    let me: Value = serde_json::from_str(&alice.ok(&["whoami", "--json"], None)).unwrap();
    assert_eq!(me["user"], "alice");

    // Blueprints: alice may not create one (403 → 4), the admin may.
    let bp = write(
        tmp.path(),
        "bp.toml",
        r#"
name = "python"
description = "Python course"
image = "cairn-test/busybox:1"
pull = "never"
app = "http"
app_port = 8080
memory_mib = 64

[placement]
zone = "a"
"#,
    );
    let err = alice.fails(&["blueprints", "create", "-f", &bp], 4);
    assert!(one_error_line(&err).contains("admin"), "{err}");
    let out = admin.ok(&["blueprints", "create", "-f", &bp], None);
    assert_eq!(out, "created blueprint python (revision 1)\n");
    let err = admin.fails(&["blueprints", "create", "-f", &bp], 6);
    one_error_line(&err);

    // A second one from JSON, then disabled: alice does not see it.
    let bp2 = write(
        tmp.path(),
        "old.json",
        r#"{"name": "old", "image": "cairn-test/busybox:1", "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 64}"#,
    );
    admin.ok(&["blueprints", "create", "-f", &bp2], None);
    let out = admin.ok(&["blueprints", "disable", "old"], None);
    assert_eq!(out, "blueprint old disabled (revision 2)\n");

    // An invalid blueprint: a headline, then one line per field; exit 7.
    let bad = write(
        tmp.path(),
        "bad.toml",
        "name = \"Py\"\nimage = \"\"\napp = \"matlab\"\nmemory_mib = 8\n",
    );
    let err = admin.fails(&["blueprints", "create", "-f", &bad], 7);
    let mut lines = err.lines();
    assert_eq!(lines.next(), Some("error: invalid blueprint"), "{err}");
    let fields: Vec<&str> = lines.collect();
    for f in ["name", "image", "app", "memory_mib"] {
        assert!(
            fields.iter().any(|l| l.starts_with(&format!("  {f}: "))),
            "{f} missing in {err}"
        );
    }
    // A file that does not parse never reaches the controller: exit 7, one line.
    let garbled = write(tmp.path(), "garbled.toml", "name = [\n");
    let err = admin.fails(&["blueprints", "create", "-f", &garbled], 7);
    assert!(one_error_line(&err).contains("invalid TOML"), "{err}");

    // alice lists the enabled blueprints (the default subcommand), table and JSON.
    let out = alice.ok(&["blueprints"], None);
    assert!(out.starts_with("NAME "), "{out}");
    assert!(out.contains("python"), "{out}");
    assert!(!out.contains("old"), "{out}");
    assert_eq!(alice.ok(&["blueprints", "ls"], None), out);
    let list: Value =
        serde_json::from_str(&alice.ok(&["blueprints", "ls", "--json"], None)).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["python"]);
    let out = alice.ok(&["blueprints", "show", "python"], None);
    assert!(out.contains("placement:     zone=a"), "{out}");
    let err = alice.fails(&["blueprints", "show", "old"], 5);
    one_error_line(&err);
    let out = admin.ok(&["blueprints", "history", "old"], None);
    assert_eq!(out.lines().count(), 3, "{out}");

    // Hosts are for admins.
    let err = alice.fails(&["hosts"], 4);
    one_error_line(&err);
    let out = admin.ok(&["hosts"], None);
    assert!(out.starts_with("no hosts"), "{out}");

    // A controller that is not there: exit 69, one line that says what to do.
    let nowhere = Cairn {
        url: format!("http://127.0.0.1:{}", free_tcp_port()),
        token: Some("some-token".into()),
        config: tmp.path().join("none.toml"),
    };
    let err = nowhere.fails(&["whoami"], 69);
    let line = one_error_line(&err);
    assert!(
        line.starts_with(&format!(
            "error: cannot reach the controller at {}",
            nowhere.url
        )),
        "{line}"
    );
    assert!(line.contains("set --url or CAIRN_URL"), "{line}");

    // Bad usage is clap's: exit 2.
    alice.fails(&["blueprints", "frobnicate"], 2);

    // Completions need no controller.
    let script = nowhere.ok(&["completions", "bash"], None);
    assert!(script.contains("cairn"), "{script}");

    // Logout revokes the token and removes it from the config file; the URL stays.
    let out = alice.ok(&["logout"], None);
    assert!(
        out.starts_with(&format!("logged out of {}", ctl.api)),
        "{out}"
    );
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(&alice_config).unwrap()).unwrap();
    assert!(saved.get("token").is_none(), "{saved:?}");
    assert_eq!(saved["url"].as_str(), Some(ctl.api.as_str()));
    let err = alice.fails(&["whoami"], 3);
    one_error_line(&err);
}

/// A copy of `c`'s identity (config file, no URL, no token).
fn alice_like(c: &Cairn) -> Cairn {
    Cairn {
        url: c.url.clone(),
        token: c.token.clone(),
        config: c.config.clone(),
    }
}
