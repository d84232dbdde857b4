//! `blueprints ls|show|create|edit|disable|enable|history|refresh`.
//!
//! Blueprint files are TOML (`.toml`) or JSON (`.json`), picked by extension; `-`
//! reads standard input as JSON if it starts with `{`, else as TOML. Either way the
//! body sent is the same JSON object, and the controller checks it field by field.

use std::io::Read;
use std::path::Path;

use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use crate::client::parse;
use crate::error::Error;
use crate::output::{self, Table};
use cairn_api::blueprints::{
    BlueprintRecord as Blueprint, BlueprintSpec, Prepull, PullPolicy, Refreshed, Revision,
};
use cairn_api::ImageSource;

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let v = ctx.client.get(&["blueprints"]).await?;
    ctx.emit(&v, || {
        let bps: Vec<Blueprint> = parse(&v, "the blueprint list")?;
        Ok(render_list(&bps))
    })
}

pub async fn show(ctx: &Ctx, name: &str) -> Result<(), Error> {
    let v = ctx.client.get(&["blueprints", name]).await?;
    ctx.emit(&v, || {
        let b: Blueprint = parse(&v, "the blueprint")?;
        Ok(render_detail(&b, output::now_ms()))
    })
}

pub async fn create(ctx: &Ctx, file: &Path) -> Result<(), Error> {
    let body = read_blueprint_file(file)?;
    let v = ctx
        .client
        .json(Method::POST, &["blueprints"], &[], Some(&body))
        .await?;
    ctx.emit(&v, || {
        let b: Blueprint = parse(&v, "the new blueprint")?;
        Ok(format!(
            "created blueprint {} (revision {})\n",
            output::clean(&b.spec.name),
            b.revision
        ))
    })
}

pub async fn edit(ctx: &Ctx, name: &str, file: &Path) -> Result<(), Error> {
    let body = read_blueprint_file(file)?;
    let v = ctx
        .client
        .json(Method::PUT, &["blueprints", name], &[], Some(&body))
        .await?;
    ctx.emit(&v, || {
        let b: Blueprint = parse(&v, "the blueprint")?;
        Ok(format!(
            "updated blueprint {} (now revision {})\n",
            output::clean(&b.spec.name),
            b.revision
        ))
    })
}

pub async fn set_enabled(ctx: &Ctx, name: &str, enabled: bool) -> Result<(), Error> {
    let verb = if enabled { "enable" } else { "disable" };
    let v = ctx.client.post(&["blueprints", name, verb], None).await?;
    ctx.emit(&v, || {
        let b: Blueprint = parse(&v, "the blueprint")?;
        Ok(format!(
            "blueprint {} {verb}d (revision {})\n",
            output::clean(&b.spec.name),
            b.revision
        ))
    })
}

/// `blueprints refresh NAME`: the controller resolves the tag again.
pub async fn refresh(ctx: &Ctx, name: &str) -> Result<(), Error> {
    let v = ctx
        .client
        .post(&["blueprints", name, "refresh"], None)
        .await?;
    ctx.emit(&v, || {
        let r: Refreshed = parse(&v, "the refreshed blueprint")?;
        Ok(render_refresh(&r))
    })
}

/// `NAME: REFERENCE (revision N)`, or `NAME: unchanged (REFERENCE, revision N)`.
pub fn render_refresh(r: &Refreshed) -> String {
    let b = &r.blueprint;
    let reference = output::clean(b.spec.run_image());
    if r.changed {
        format!(
            "{}: {reference} (revision {})\n",
            output::clean(&b.spec.name),
            b.revision
        )
    } else {
        format!(
            "{}: unchanged ({reference}, revision {})\n",
            output::clean(&b.spec.name),
            b.revision
        )
    }
}

fn pull(p: PullPolicy) -> String {
    match p {
        PullPolicy::Never => "never (the image is already on every host)".into(),
        PullPolicy::Registry => "registry".into(),
    }
}

fn prepull(p: Prepull) -> String {
    match p {
        Prepull::Hosts(1) => "1 host".into(),
        Prepull::Hosts(n) => format!("{n} hosts"),
        other => other.to_string(),
    }
}

fn resolved(b: &BlueprintSpec, now_ms: u64) -> String {
    match &b.resolved {
        Some(r) if !r.reference.is_empty() => {
            let how = match &r.source {
                ImageSource::Host => "as on each host",
                ImageSource::Controller { .. } => "uploaded to the controller",
                ImageSource::Registry => "from the registry",
            };
            format!(
                "{} ({how}, resolved {})",
                output::clean(&r.reference),
                output::ago(now_ms, r.resolved_ms)
            )
        }
        _ => "- (not resolved; instances use the tag)".into(),
    }
}

pub async fn history(ctx: &Ctx, name: &str) -> Result<(), Error> {
    let v = ctx.client.get(&["blueprints", name, "revisions"]).await?;
    ctx.emit(&v, || {
        let revs: Vec<Revision> = parse(&v, "the revisions")?;
        Ok(render_history(&revs, output::now_ms()))
    })
}

/// Reads a blueprint file (`-`: standard input) into the JSON body to send.
pub fn read_blueprint_file(path: &Path) -> Result<Value, Error> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(Error::io("reading the blueprint from standard input"))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?
    };
    parse_blueprint(path, &text)
}

/// The kinds of blueprint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Json,
}

/// Parses a blueprint file's text into a JSON object; the format comes from the
/// extension of `path` (for `-`, from the text).
pub fn parse_blueprint(path: &Path, text: &str) -> Result<Value, Error> {
    let shown = path.display();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let format = match ext.as_deref() {
        Some("toml") => Format::Toml,
        Some("json") => Format::Json,
        _ if path == Path::new("-") => {
            if text.trim_start().starts_with('{') {
                Format::Json
            } else {
                Format::Toml
            }
        }
        _ => {
            return Err(Error::Input(format!(
                "{shown}: cannot tell the format from the name; use a .toml or .json file"
            )))
        }
    };
    let value: Value = match format {
        Format::Json => serde_json::from_str(text)
            .map_err(|e| Error::Input(format!("{shown}: invalid JSON: {e}")))?,
        Format::Toml => toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!("line {line}, column {col}: ")
                })
                .unwrap_or_default();
            Error::Input(format!(
                "{shown}: invalid TOML: {at}{}",
                crate::error::one_line(e.message())
            ))
        })?,
    };
    if !value.is_object() {
        return Err(Error::Input(format!(
            "{shown}: a blueprint is a table of fields (a JSON object)"
        )));
    }
    Ok(value)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn cpus(c: f64) -> String {
    format!("{c}")
}

fn memory(mib: u64) -> String {
    output::bytes(mib.saturating_mul(1024 * 1024))
}

fn lifetime(secs: u64) -> String {
    output::duration_ms(secs.saturating_mul(1000))
}

fn status(enabled: bool) -> String {
    if enabled { "enabled" } else { "disabled" }.into()
}

/// The `blueprints ls` table.
pub fn render_list(bps: &[Blueprint]) -> String {
    if bps.is_empty() {
        return "no blueprints\n".into();
    }
    let mut t = Table::new(&[
        "NAME",
        "REV",
        "APP",
        "IMAGE",
        "CPUS",
        "MEMORY",
        "LIFETIME",
        "STATUS",
        "DESCRIPTION",
    ]);
    for b in bps {
        let (rev, b) = (b.revision, &b.spec);
        t.row(vec![
            b.name.clone(),
            rev.to_string(),
            b.app.to_string(),
            b.image.clone(),
            cpus(b.cpus),
            memory(b.memory_mib),
            lifetime(b.max_lifetime_secs),
            status(b.enabled),
            output::truncate(&output::clean(&b.description), 40),
        ]);
    }
    t.render()
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `blueprints show`.
pub fn render_detail(record: &Blueprint, now_ms: u64) -> String {
    let b = &record.spec;
    let app = format!("{} on port {}", b.app, b.app_port);
    let command = match &b.command {
        Some(c) => serde_json::to_string(c).unwrap_or_default(),
        None => "(the image's own)".into(),
    };
    output::key_values(&[
        ("name", b.name.clone()),
        (
            "revision",
            format!(
                "{} (saved {})",
                record.revision,
                output::ago(now_ms, record.updated_ms)
            ),
        ),
        ("status", status(b.enabled)),
        ("description", b.description.clone()),
        ("image", b.image.clone()),
        ("resolved", resolved(b, now_ms)),
        ("pull", pull(b.pull)),
        ("prepull", prepull(b.prepull)),
        ("app", app),
        ("command", command),
        ("cpus", cpus(b.cpus)),
        ("memory", memory(b.memory_mib)),
        ("max lifetime", lifetime(b.max_lifetime_secs)),
        ("max per user", b.max_instances_per_user.to_string()),
        ("priority", b.priority.to_string()),
        ("env", pairs(&b.env)),
        ("placement", pairs(&b.placement)),
        ("datasets", datasets(&b.datasets)),
    ])
}

/// `NAME@VERSION → PATH` per line (`latest` is resolved at each launch).
fn datasets(list: &[cairn_api::blueprints::BlueprintDataset]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `blueprints history`, newest first.
pub fn render_history(revs: &[Revision], now_ms: u64) -> String {
    let mut t = Table::new(&[
        "REV", "SAVED", "STATUS", "APP", "IMAGE", "CPUS", "MEMORY", "LIFETIME",
    ]);
    let mut revs: Vec<&Revision> = revs.iter().collect();
    revs.sort_by_key(|r| std::cmp::Reverse(r.revision));
    for r in revs {
        let s = &r.spec;
        t.row(vec![
            r.revision.to_string(),
            output::ago(now_ms, r.saved_ms),
            status(s.enabled),
            s.app.to_string(),
            s.image.clone(),
            cpus(s.cpus),
            memory(s.memory_mib),
            lifetime(s.max_lifetime_secs),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::blueprints::AppKind;
    use serde_json::json;

    const TOML: &str = r#"
name = "python"
description = "Python course"
image = "jupyter/base-notebook:2024-01-01"
app = "jupyter"
memory_mib = 512
cpus = 1.5
command = ["start-notebook.sh", "--debug"]
enabled = true

[env]
COURSE = "intro"

[placement]
zone = "a"
"#;

    const JSON: &str = r#"{
  "name": "python", "description": "Python course",
  "image": "jupyter/base-notebook:2024-01-01", "app": "jupyter",
  "memory_mib": 512, "cpus": 1.5, "command": ["start-notebook.sh", "--debug"],
  "enabled": true, "env": {"COURSE": "intro"}, "placement": {"zone": "a"}
}"#;

    #[test]
    fn toml_and_json_files_give_the_same_body() {
        let a = parse_blueprint(Path::new("bp.toml"), TOML).unwrap();
        let b = parse_blueprint(Path::new("bp.JSON"), JSON).unwrap();
        assert_eq!(a, b);
        assert_eq!(a["memory_mib"], json!(512));
        assert!(a["memory_mib"].is_u64(), "integers stay integers");
        assert_eq!(a["cpus"], json!(1.5));
        // Standard input: the format is told from the text.
        assert_eq!(parse_blueprint(Path::new("-"), TOML).unwrap(), a);
        assert_eq!(parse_blueprint(Path::new("-"), JSON).unwrap(), a);
    }

    #[test]
    fn bad_files_are_invalid_input_with_a_position() {
        let e = parse_blueprint(Path::new("bp.toml"), "name = \"x\"\nimage = [\n").unwrap_err();
        assert_eq!(e.exit_code(), 7);
        let msg = e.to_string();
        assert!(
            msg.starts_with("bp.toml: invalid TOML: line 2, column "),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        let e = parse_blueprint(Path::new("bp.json"), "{\"name\": }").unwrap_err();
        assert!(e.to_string().starts_with("bp.json: invalid JSON: "), "{e}");
        let e = parse_blueprint(Path::new("bp.yaml"), "name: x").unwrap_err();
        assert!(e.to_string().contains("use a .toml or .json file"), "{e}");
        let e = parse_blueprint(Path::new("bp.json"), "[1, 2]").unwrap_err();
        assert!(e.to_string().contains("JSON object"), "{e}");
    }

    fn sample() -> Blueprint {
        serde_json::from_value(json!({"revision":2,"created_ms":1000,"updated_ms":50_000,"name":"python",
            "description":"A rather long description of the Python course for beginners","image":"img:1",
            "command":null,"env":{"A":"1","B":"2"},"app":"jupyter","app_port":8888,"memory_mib":512,
            "cpus":1.5,"max_lifetime_secs":5400,"max_instances_per_user":1,"placement":{},"enabled":true}))
        .unwrap()
    }

    #[test]
    fn list_renders_a_table() {
        let mut off = sample();
        off.spec.name = "r".into();
        off.spec.enabled = false;
        off.spec.app = AppKind::Rstudio;
        off.spec.description = String::new();
        off.spec.memory_mib = 4096;
        off.spec.cpus = 2.0;
        off.spec.max_lifetime_secs = 30 * 86_400;
        assert_eq!(
            render_list(&[sample(), off]),
            "NAME     REV   APP       IMAGE   CPUS   MEMORY    LIFETIME   STATUS     DESCRIPTION\n\
             python   2     jupyter   img:1   1.5    512 MiB   1h30m      enabled    A rather long description of the Python…\n\
             r        2     rstudio   img:1   2      4.0 GiB   30d        disabled\n"
        );
        assert_eq!(render_list(&[]), "no blueprints\n");
    }

    #[test]
    fn show_renders_every_field() {
        let text = render_detail(&sample(), 110_000);
        assert!(text.contains("revision:      2 (saved 1m ago)\n"), "{text}");
        assert!(
            text.contains("app:           jupyter on port 8888\n"),
            "{text}"
        );
        assert!(
            text.contains("command:       (the image's own)\n"),
            "{text}"
        );
        assert!(
            text.contains("env:           A=1\n               B=2\n"),
            "{text}"
        );
        assert!(text.contains("placement:     -\n"), "{text}");
        assert!(text.contains("datasets:      -\n"), "{text}");
        // A record from before priorities reads as the default.
        assert!(text.contains("priority:      0\n"), "{text}");
        let mut urgent = sample();
        urgent.spec.priority = -7;
        let text = render_detail(&urgent, 110_000);
        assert!(text.contains("priority:      -7\n"), "{text}");
        urgent.spec.datasets = serde_json::from_value(json!([
            {"name": "course-data", "path": "/data/course"},
            {"name": "shared", "version": 3, "path": "/data/shared"}]))
        .unwrap();
        let text = render_detail(&urgent, 110_000);
        assert!(
            text.contains(
                "datasets:      course-data@latest \u{2192} /data/course\n               shared@3 \u{2192} /data/shared\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn show_renders_the_resolved_image() {
        let mut b = sample();
        b.spec.pull = PullPolicy::Registry;
        b.spec.prepull = Prepull::Hosts(2);
        b.spec.resolved = serde_json::from_value(json!({
            "reference": "127.0.0.1:5000/course/python@sha256:abc",
            "source": "Registry", "resolved_ms": 50_000}))
        .unwrap();
        let text = render_detail(&b, 110_000);
        assert!(
            text.contains(
                "resolved:      127.0.0.1:5000/course/python@sha256:abc (from the registry, resolved 1m ago)\n"
            ),
            "{text}"
        );
        assert!(text.contains("pull:          registry\n"), "{text}");
        assert!(text.contains("prepull:       2 hosts\n"), "{text}");
        // An old record without resolution, and pull = never.
        let mut old = sample();
        old.spec.pull = PullPolicy::Never;
        old.spec.prepull = Prepull::None;
        let text = render_detail(&old, 110_000);
        assert!(text.contains("resolved:      - (not resolved"), "{text}");
        assert!(text.contains("pull:          never"), "{text}");
        assert!(text.contains("prepull:       none\n"), "{text}");
    }

    #[test]
    fn refresh_says_what_changed() {
        let mut b = sample();
        b.revision = 3;
        b.spec.resolved = serde_json::from_value(
            json!({"reference": "r/x@sha256:1", "source": "Registry", "resolved_ms": 1}),
        )
        .unwrap();
        let changed = Refreshed {
            changed: true,
            blueprint: b.clone(),
        };
        assert_eq!(
            render_refresh(&changed),
            "python: r/x@sha256:1 (revision 3)\n"
        );
        let same = Refreshed {
            changed: false,
            blueprint: b,
        };
        assert_eq!(
            render_refresh(&same),
            "python: unchanged (r/x@sha256:1, revision 3)\n"
        );
    }

    #[test]
    fn history_is_newest_first() {
        let revs: Vec<Revision> = (1..=3)
            .map(|n| Revision {
                revision: n,
                saved_ms: u64::from(n) * 1000,
                spec: sample().spec,
            })
            .collect();
        let text = render_history(&revs, 10_000);
        let firsts: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(firsts, ["REV", "3", "2", "1"]);
        assert!(text.lines().nth(1).unwrap().contains("7s ago"));
    }
}
