//! A blueprint's fields and their validation.
//!
//! Input arrives as [`BlueprintInput`], every field optional, so that one pass can
//! report *all* problems, each with the field it belongs to, instead of stopping at
//! the first (or at a serde error that names no field). [`validate`] turns a good
//! input into a [`BlueprintSpec`] with defaults filled in. The types are the API
//! model's (`cairn_api::blueprints`), re-exported here; the rules are the controller's.

pub use cairn_api::blueprints::{
    AppKind, BlueprintInput, BlueprintSpec, Prepull, PrepullInput, PullPolicy, ResolvedImage,
};
pub use cairn_api::error::FieldError;

/// Default maximum lifetime of an instance: one hour.
pub const DEFAULT_LIFETIME_SECS: u64 = 3600;
/// Longest lifetime a blueprint may allow: 30 days.
pub const MAX_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// Smallest memory limit: below this, Docker and most apps do not start.
pub const MIN_MEMORY_MIB: u64 = 16;
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
/// The range of a blueprint's launch-queue priority (default 0). Bounded so the
/// scale stays readable and any value fits the scheduler's `i8`.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i8> = -100..=100;

fn err(errors: &mut Vec<FieldError>, field: impl Into<String>, message: impl Into<String>) {
    errors.push(FieldError {
        field: field.into(),
        message: message.into(),
    });
}

/// Whether `s` is a blueprint name: 1–63 of `a-z 0-9 -`, starting with a letter.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.ends_with('-')
}

fn valid_env_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && (k.as_bytes()[0].is_ascii_alphabetic() || k.as_bytes()[0] == b'_')
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Environment names Cairn sets itself (per-app conventions); a blueprint may not.
const RESERVED_ENV: &[&str] = &[
    "JUPYTER_TOKEN",
    "PASSWORD",
    "CAIRN_INSTANCE",
    "CAIRN_BASE_URL",
];

/// Checks every field; returns the spec with defaults, or every problem found.
pub fn validate(input: &BlueprintInput) -> Result<BlueprintSpec, Vec<FieldError>> {
    let mut e = vec![];
    let name = input.name.clone().unwrap_or_default();
    if input.name.is_none() {
        err(&mut e, "name", "required");
    } else if !valid_name(&name) {
        err(
            &mut e,
            "name",
            "1-63 characters of a-z, 0-9 and '-', starting with a letter, not ending with '-'",
        );
    }
    let description = input.description.clone().unwrap_or_default();
    if description.len() > 2000 {
        err(&mut e, "description", "at most 2000 bytes");
    }
    let image = input.image.clone().unwrap_or_default();
    if image.trim().is_empty() {
        err(
            &mut e,
            "image",
            "required: the container image, e.g. jupyter/base-notebook:2024-01-01",
        );
    } else if image.len() > 512 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        err(&mut e, "image", "at most 512 characters, no spaces");
    }
    if let Some(cmd) = &input.command {
        if cmd.is_empty() {
            err(
                &mut e,
                "command",
                "must not be empty when given (omit it to use the image's command)",
            );
        } else if cmd.len() > 64 || cmd.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
            err(
                &mut e,
                "command",
                "at most 64 arguments of at most 4096 bytes, no NUL",
            );
        }
    }
    let env = input.env.clone().unwrap_or_default();
    if env.len() > 128 {
        err(&mut e, "env", "at most 128 variables");
    }
    for (k, v) in &env {
        if !valid_env_key(k) {
            err(
                &mut e,
                format!("env.{k}"),
                "names are letters, digits and '_', not starting with a digit",
            );
        } else if RESERVED_ENV.contains(&k.as_str()) {
            err(
                &mut e,
                format!("env.{k}"),
                "set by Cairn for each instance; remove it",
            );
        } else if v.len() > 32 * 1024 || v.contains('\0') {
            err(
                &mut e,
                format!("env.{k}"),
                "values are at most 32 KiB, no NUL",
            );
        }
    }
    let app = match input.app.as_deref() {
        None => {
            err(&mut e, "app", "required: one of jupyter, rstudio, http");
            AppKind::Http
        }
        Some(s) => AppKind::parse(s).unwrap_or_else(|| {
            err(
                &mut e,
                "app",
                format!("unknown app kind {s:?}: one of jupyter, rstudio, http"),
            );
            AppKind::Http
        }),
    };
    let default_port = match app {
        AppKind::Jupyter => Some(8888),
        AppKind::Rstudio => Some(8787),
        AppKind::Http => None,
    };
    let app_port = match input.app_port.or(default_port) {
        None => {
            err(&mut e, "app_port", "required for app kind http");
            0
        }
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => {
            err(&mut e, "app_port", format!("{p} is out of range 1-65535"));
            0
        }
    };
    let memory_mib = match input.memory_mib {
        None => {
            err(&mut e, "memory_mib", "required: the memory limit in MiB");
            0
        }
        Some(m) if m < MIN_MEMORY_MIB as i64 => {
            err(
                &mut e,
                "memory_mib",
                format!("{m} MiB is under the minimum of {MIN_MEMORY_MIB} MiB"),
            );
            0
        }
        Some(m) if m > MAX_MEMORY_MIB as i64 => {
            err(
                &mut e,
                "memory_mib",
                format!("at most {MAX_MEMORY_MIB} MiB"),
            );
            0
        }
        Some(m) => m as u64,
    };
    let cpus = input.cpus.unwrap_or(1.0);
    if !cpus.is_finite() || !(0.01..=1024.0).contains(&cpus) {
        err(&mut e, "cpus", "between 0.01 and 1024");
    }
    let max_lifetime_secs = match input.max_lifetime_secs {
        None => DEFAULT_LIFETIME_SECS,
        Some(l) if l <= 0 => {
            err(&mut e, "max_lifetime_secs", "must be greater than 0");
            0
        }
        Some(l) if l as u64 > MAX_LIFETIME_SECS => {
            err(
                &mut e,
                "max_lifetime_secs",
                format!("at most {MAX_LIFETIME_SECS} (30 days)"),
            );
            0
        }
        Some(l) => l as u64,
    };
    let max_instances_per_user = match input.max_instances_per_user {
        None => 1,
        Some(n) if (1..=1000).contains(&n) => n as u32,
        Some(n) => {
            err(
                &mut e,
                "max_instances_per_user",
                format!("{n} is out of range 1-1000"),
            );
            0
        }
    };
    let priority = match input.priority {
        None => 0,
        Some(p) => match i8::try_from(p) {
            Ok(p) if PRIORITY_RANGE.contains(&p) => p,
            _ => {
                err(
                    &mut e,
                    "priority",
                    format!(
                        "{p} is out of range {} to {}",
                        PRIORITY_RANGE.start(),
                        PRIORITY_RANGE.end()
                    ),
                );
                0
            }
        },
    };
    let strategy = match input.strategy.as_deref() {
        None | Some("") => None,
        Some("binpack") => Some(cairn_api::blueprints::Strategy::Binpack),
        Some("spread") => Some(cairn_api::blueprints::Strategy::Spread),
        Some(other) => {
            err(
                &mut e,
                "strategy",
                format!("{other:?} is not a strategy; use binpack or spread"),
            );
            None
        }
    };
    let pull = match input.pull.as_deref() {
        None | Some("") | Some("registry") => PullPolicy::Registry,
        Some("never") => PullPolicy::Never,
        Some(other) => {
            err(
                &mut e,
                "pull",
                format!(
                    "{other:?}: use registry (resolve and pull) or never (already on every host)"
                ),
            );
            PullPolicy::Registry
        }
    };
    let prepull = match &input.prepull {
        None => Prepull::All,
        Some(PrepullInput::Word(w)) if w == "all" => Prepull::All,
        Some(PrepullInput::Word(w)) if w == "none" => Prepull::None,
        Some(PrepullInput::Word(w))
            if w.parse::<u32>().is_ok_and(|n| (1..=10_000).contains(&n)) =>
        {
            Prepull::Hosts(w.parse().unwrap_or(1))
        }
        Some(PrepullInput::Hosts(n)) if (1..=10_000).contains(n) => Prepull::Hosts(*n as u32),
        Some(other) => {
            let shown = match other {
                PrepullInput::Word(w) => format!("{w:?}"),
                PrepullInput::Hosts(n) => n.to_string(),
            };
            err(
                &mut e,
                "prepull",
                format!("{shown}: use all, none, or a number of hosts from 1 to 10000"),
            );
            Prepull::All
        }
    };
    let placement = input.placement.clone().unwrap_or_default();
    if placement.len() > 32 {
        err(&mut e, "placement", "at most 32 labels");
    }
    for (k, v) in &placement {
        if let Err(x) = cairn_shared::validate::label("placement", k, v) {
            err(&mut e, x.field, x.problem);
        }
    }
    if !e.is_empty() {
        return Err(e);
    }
    Ok(BlueprintSpec {
        name,
        description,
        image: image.trim().to_string(),
        command: input.command.clone(),
        env,
        app,
        app_port,
        memory_mib,
        cpus,
        max_lifetime_secs,
        max_instances_per_user,
        priority,
        placement,
        strategy,
        pull,
        prepull,
        resolved: None,
        enabled: input.enabled.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> BlueprintInput {
        BlueprintInput {
            name: Some("python-course".into()),
            image: Some("cairn/jupyter:1".into()),
            app: Some("jupyter".into()),
            memory_mib: Some(512),
            ..Default::default()
        }
    }

    fn fields(r: Result<BlueprintSpec, Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_are_filled_in() {
        let s = validate(&good()).unwrap();
        assert_eq!(
            (
                s.app_port,
                s.max_lifetime_secs,
                s.max_instances_per_user,
                s.priority,
                s.enabled
            ),
            (8888, 3600, 1, 0, true)
        );
        assert_eq!(s.cpus, 1.0);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let bad = BlueprintInput {
            name: Some("Bad Name".into()),
            image: Some("".into()),
            app: Some("matlab".into()),
            app_port: Some(70000),
            memory_mib: Some(8),
            cpus: Some(0.0),
            max_lifetime_secs: Some(0),
            max_instances_per_user: Some(0),
            priority: Some(101),
            env: Some(
                [
                    ("JUPYTER_TOKEN".to_string(), "x".to_string()),
                    ("1X".to_string(), "y".to_string()),
                ]
                .into(),
            ),
            placement: Some([("GPU".to_string(), "true".to_string())].into()),
            ..Default::default()
        };
        let f = fields(validate(&bad));
        for want in [
            "name",
            "image",
            "app",
            "app_port",
            "memory_mib",
            "cpus",
            "max_lifetime_secs",
            "max_instances_per_user",
            "priority",
            "env.JUPYTER_TOKEN",
            "env.1X",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} missing from {f:?}");
        }
        assert!(f.iter().any(|x| x.starts_with("placement")), "{f:?}");
    }

    #[test]
    fn missing_required_fields() {
        let f = fields(validate(&BlueprintInput::default()));
        assert_eq!(f, vec!["name", "image", "app", "app_port", "memory_mib"]);
        let http = BlueprintInput {
            app: Some("http".into()),
            app_port: None,
            ..good()
        };
        assert_eq!(fields(validate(&http)), vec!["app_port"]);
    }

    #[test]
    fn memory_boundary() {
        assert!(validate(&BlueprintInput {
            memory_mib: Some(15),
            ..good()
        })
        .is_err());
        assert!(validate(&BlueprintInput {
            memory_mib: Some(16),
            ..good()
        })
        .is_ok());
    }

    #[test]
    fn priority_boundary() {
        let with = |p| {
            validate(&BlueprintInput {
                priority: Some(p),
                ..good()
            })
        };
        for ok in [-100i8, -1, 0, 7, 100] {
            assert_eq!(with(i64::from(ok)).unwrap().priority, ok, "{ok}");
        }
        // Values past i8's and i64's ends too: none may wrap into the range.
        for bad in [-101, 101, 128, 256 + 5, i64::MIN, i64::MAX] {
            let errs = with(bad).unwrap_err();
            assert_eq!(
                (errs[0].field.as_str(), errs[0].message.clone()),
                ("priority", format!("{bad} is out of range -100 to 100")),
            );
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "python-101", "r2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "1abc", "ab-", "a_b", "A", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
