//! A blueprint's fields and their validation.
//!
//! Input arrives as [`BlueprintInput`], every field optional, so that one pass can
//! report *all* problems, each with the field it belongs to, instead of stopping at
//! the first (or at a serde error that names no field). [`validate`] turns a good
//! input into a [`BlueprintSpec`] with defaults filled in. The types are the API
//! model's (`cairn_api::blueprints`), re-exported here; the rules are the controller's.

pub use cairn_api::blueprints::{
    AppKind, BlueprintDataset, BlueprintInput, BlueprintSpec, BlueprintVolume, DatasetInput,
    DatasetVersionInput, Prepull, PrepullInput, PullPolicy, ResolvedImage, VolumeInput,
};
pub use cairn_api::error::FieldError;
pub use cairn_shared::workload::MAX_INSTANCE_DATASETS;

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

/// Longest dataset mount path.
pub const MAX_DATASET_PATH: usize = 256;
/// Highest dataset version a blueprint may pin (versions count from 1).
pub const MAX_DATASET_VERSION: i64 = u32::MAX as i64;

/// Container paths a dataset may not be mounted on or under: the runtime's own
/// (a mount there breaks the container or hides what it needs).
const FORBIDDEN_MOUNTS: &[&str] = &["/proc", "/sys", "/dev", "/etc"];

/// Why `path` cannot be a dataset mount point, if it cannot.
fn mount_path_problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("required: an absolute path inside the container, e.g. /data/course".into());
    }
    if path.len() > MAX_DATASET_PATH {
        return Some(format!("at most {MAX_DATASET_PATH} bytes"));
    }
    if !path.starts_with('/') {
        return Some(format!("{path:?} is not an absolute path"));
    }
    if path == "/" {
        return Some("cannot mount over the container's root".into());
    }
    if path.chars().any(|c| c.is_control()) {
        return Some("no control characters".into());
    }
    if path.ends_with('/') || path.contains("//") {
        return Some(format!(
            "{path:?} is not normalised: no trailing '/' and no empty components"
        ));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Some(format!(
            "{path:?} is not normalised: no '.' or '..' components"
        ));
    }
    if let Some(root) = FORBIDDEN_MOUNTS.iter().find(|r| is_within(path, r)) {
        return Some(format!("cannot mount on or under {root}"));
    }
    None
}

/// Whether `path` is `root` or below it (by components: `/data2` is not under `/data`).
fn is_within(path: &str, root: &str) -> bool {
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether the dataset list came out clean (no error recorded, no placeholder).
fn ok_all(out: &[BlueprintDataset], e: &[FieldError]) -> bool {
    !e.iter().any(|f| f.field.starts_with("datasets")) && out.iter().all(|d| !d.path.is_empty())
}

/// Checks the `datasets` list: names, versions, mount paths, no two mounts on the same
/// or nested paths, at most [`MAX_INSTANCE_DATASETS`]. Whether the datasets exist is
/// the service's question (it needs the catalogue).
pub fn validate_datasets(
    input: Option<&[DatasetInput]>,
    e: &mut Vec<FieldError>,
) -> Vec<BlueprintDataset> {
    let Some(list) = input else {
        return vec![];
    };
    if list.len() > MAX_INSTANCE_DATASETS {
        err(
            e,
            "datasets",
            format!(
                "at most {MAX_INSTANCE_DATASETS} datasets, got {}",
                list.len()
            ),
        );
        return vec![];
    }
    let mut out: Vec<BlueprintDataset> = Vec::with_capacity(list.len());
    for (n, d) in list.iter().enumerate() {
        let name = d.name.clone().unwrap_or_default();
        if d.name.is_none() {
            err(
                e,
                format!("datasets[{n}].name"),
                "required: the dataset's name",
            );
        } else if !valid_name(&name) {
            err(
                e,
                format!("datasets[{n}].name"),
                "1-63 characters of a-z, 0-9 and '-', starting with a letter, not ending with '-'",
            );
        }
        let version = match &d.version {
            None => None,
            Some(DatasetVersionInput::Word(w)) if w == "latest" || w.is_empty() => None,
            Some(DatasetVersionInput::Word(w))
                if w.parse::<i64>()
                    .is_ok_and(|v| (1..=MAX_DATASET_VERSION).contains(&v)) =>
            {
                w.parse::<u32>().ok()
            }
            Some(DatasetVersionInput::Number(v)) if (1..=MAX_DATASET_VERSION).contains(v) => {
                u32::try_from(*v).ok()
            }
            Some(other) => {
                let shown = match other {
                    DatasetVersionInput::Word(w) => format!("{w:?}"),
                    DatasetVersionInput::Number(v) => v.to_string(),
                };
                err(
                    e,
                    format!("datasets[{n}].version"),
                    format!("{shown}: use latest or a version number from 1"),
                );
                None
            }
        };
        let path = d.path.clone().unwrap_or_default();
        let mut path_ok = true;
        if let Some(problem) = mount_path_problem(&path) {
            err(e, format!("datasets[{n}].path"), problem);
            path_ok = false;
        } else if let Some((m, other)) = out
            .iter()
            .enumerate()
            .filter(|(_, o)| !o.path.is_empty())
            .find(|(_, o)| is_within(&path, &o.path) || is_within(&o.path, &path))
        {
            err(
                e,
                format!("datasets[{n}].path"),
                if other.path == path {
                    format!("{path} is already the mount point of datasets[{m}]")
                } else {
                    format!(
                        "{path} and datasets[{m}]'s {} are nested; mount points must be apart",
                        other.path
                    )
                },
            );
            path_ok = false;
        }
        // A bad path stays as a placeholder with none, so the indices in later
        // messages are the input's; any error fails the whole spec anyway.
        out.push(BlueprintDataset {
            name,
            version,
            path: if path_ok { path } else { String::new() },
        });
    }
    if ok_all(&out, e) {
        out
    } else {
        vec![]
    }
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
    let datasets = validate_datasets(input.datasets.as_deref(), &mut e);
    let volume = validate_volume(input.volume.as_ref(), &datasets, &mut e);
    let group = match input.group.as_deref() {
        None | Some("") => None,
        Some(cairn_api::groups::DEFAULT_GROUP) => None,
        Some(g) if valid_name(g) => Some(g.to_string()),
        Some(_) => {
            err(
                &mut e,
                "group",
                "a group's name: 1-63 characters of a-z, 0-9 and '-'",
            );
            None
        }
    };
    let cost = match input.cost {
        None => 1.0,
        Some(c) if c.is_finite() && (0.0..=1000.0).contains(&c) => c,
        Some(c) => {
            err(
                &mut e,
                "cost",
                format!("{c}: credits an hour, from 0 to 1000"),
            );
            1.0
        }
    };
    let idle_timeout_secs = match input.idle_timeout_secs {
        None => None,
        Some(t) if (0..=MAX_IDLE_TIMEOUT_SECS as i64).contains(&t) => Some(t as u64),
        Some(t) => {
            err(
                &mut e,
                "idle_timeout_secs",
                format!("{t}: from 0 (never) to {MAX_IDLE_TIMEOUT_SECS} (30 days)"),
            );
            None
        }
    };
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
        datasets,
        volume,
        resolved: None,
        group,
        cost,
        idle_timeout_secs,
        enabled: input.enabled.unwrap_or(true),
    })
}

/// The longest idle timeout: 30 days.
pub const MAX_IDLE_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// Longest checkpoint period: a day.
pub const MAX_CHECKPOINT_MINUTES: i64 = 1440;
/// Default checkpoint period.
pub const DEFAULT_CHECKPOINT_MINUTES: u32 = 5;

/// Checks `volume`: an absolute mount path apart from every dataset's, a checkpoint
/// period, an optional numeric `UID:GID`.
pub fn validate_volume(
    input: Option<&VolumeInput>,
    datasets: &[BlueprintDataset],
    e: &mut Vec<FieldError>,
) -> Option<BlueprintVolume> {
    let v = input?;
    let path = v.path.clone().unwrap_or_default();
    if let Some(problem) = mount_path_problem(&path) {
        err(e, "volume.path", problem);
    } else if let Some(d) = datasets
        .iter()
        .find(|d| is_within(&path, &d.path) || is_within(&d.path, &path))
    {
        err(
            e,
            "volume.path",
            format!(
                "{path} and dataset {}'s {} overlap; mount points must be apart",
                d.name, d.path
            ),
        );
    }
    let secs = match v.checkpoint_minutes {
        None => DEFAULT_CHECKPOINT_MINUTES * 60,
        Some(0.0) => 0,
        Some(m) if (0.1..=MAX_CHECKPOINT_MINUTES as f64).contains(&m) => (m * 60.0).round() as u32,
        Some(m) => {
            err(
                e,
                "volume.checkpoint_minutes",
                format!("{m}: 0 (save only at stop), or from 0.1 to {MAX_CHECKPOINT_MINUTES}"),
            );
            0
        }
    };
    let owner = match v.owner.as_deref() {
        None => None,
        Some(o) => match parse_owner(o) {
            Some(ug) => Some(ug),
            None => {
                err(
                    e,
                    "volume.owner",
                    format!(
                        "{:?} is not UID:GID (two numbers, e.g. 1000:100)",
                        o.chars().take(40).collect::<String>()
                    ),
                );
                None
            }
        },
    };
    Some(BlueprintVolume {
        path,
        checkpoint_secs: secs,
        owner,
    })
}

/// `UID:GID` as two numbers.
fn parse_owner(s: &str) -> Option<(u32, u32)> {
    let (u, g) = s.split_once(':')?;
    let num = |x: &str| {
        (!x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
            .then(|| x.parse::<u32>().ok())
            .flatten()
    };
    Some((num(u)?, num(g)?))
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

    fn with_datasets(list: Vec<DatasetInput>) -> Result<BlueprintSpec, Vec<FieldError>> {
        validate(&BlueprintInput {
            datasets: Some(list),
            ..good()
        })
    }

    fn ds(name: &str, version: Option<DatasetVersionInput>, path: &str) -> DatasetInput {
        DatasetInput {
            name: Some(name.into()),
            version,
            path: Some(path.into()),
        }
    }

    /// The (field, message) pairs of a failed validation.
    fn problems(r: Result<BlueprintSpec, Vec<FieldError>>) -> Vec<(String, String)> {
        r.unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn datasets_default_to_none_and_latest() {
        assert!(validate(&good()).unwrap().datasets.is_empty());
        let s = with_datasets(vec![
            ds("course-data", None, "/data/course"),
            ds(
                "shared",
                Some(DatasetVersionInput::Word("latest".into())),
                "/data/shared",
            ),
            ds("pinned", Some(DatasetVersionInput::Number(3)), "/data/p"),
            ds(
                "pinned-too",
                Some(DatasetVersionInput::Word("12".into())),
                "/opt/x",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.datasets
                .iter()
                .map(|d| (d.reference(), d.path.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("course-data@latest".to_string(), "/data/course"),
                ("shared@latest".to_string(), "/data/shared"),
                ("pinned@3".to_string(), "/data/p"),
                ("pinned-too@12".to_string(), "/opt/x"),
            ]
        );
        // The spec's JSON leaves a `latest` version out and reads back the same.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["datasets"][0],
            serde_json::json!({"name": "course-data", "path": "/data/course"})
        );
        assert_eq!(json["datasets"][2]["version"], 3);
        assert_eq!(serde_json::from_value::<BlueprintSpec>(json).unwrap(), s);
    }

    #[test]
    fn records_without_datasets_still_read() {
        let mut json = serde_json::to_value(validate(&good()).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("datasets");
        let s: BlueprintSpec = serde_json::from_value(json).unwrap();
        assert!(s.datasets.is_empty());
    }

    #[test]
    fn dataset_names_and_versions() {
        let bad = with_datasets(vec![
            DatasetInput {
                name: None,
                version: None,
                path: Some("/a".into()),
            },
            ds("Course_Data", None, "/b"),
            ds("ok", Some(DatasetVersionInput::Number(0)), "/c"),
            ds("ok", Some(DatasetVersionInput::Word("newest".into())), "/d"),
            ds("ok", Some(DatasetVersionInput::Number(1 << 40)), "/e"),
        ]);
        let name_rule =
            "1-63 characters of a-z, 0-9 and '-', starting with a letter, not ending with '-'";
        assert_eq!(
            problems(bad),
            vec![
                (
                    "datasets[0].name".into(),
                    "required: the dataset's name".into()
                ),
                ("datasets[1].name".into(), name_rule.into()),
                (
                    "datasets[2].version".into(),
                    "0: use latest or a version number from 1".into()
                ),
                (
                    "datasets[3].version".into(),
                    "\"newest\": use latest or a version number from 1".into()
                ),
                (
                    "datasets[4].version".into(),
                    "1099511627776: use latest or a version number from 1".into()
                ),
            ]
        );
    }

    #[test]
    fn dataset_mount_paths() {
        let cases: &[(&str, &str)] = &[
            (
                "",
                "required: an absolute path inside the container, e.g. /data/course",
            ),
            ("data", "\"data\" is not an absolute path"),
            ("/", "cannot mount over the container's root"),
            (
                "/data/",
                "\"/data/\" is not normalised: no trailing '/' and no empty components",
            ),
            (
                "/data//x",
                "\"/data//x\" is not normalised: no trailing '/' and no empty components",
            ),
            (
                "/data/../etc",
                "\"/data/../etc\" is not normalised: no '.' or '..' components",
            ),
            (
                "/data/./x",
                "\"/data/./x\" is not normalised: no '.' or '..' components",
            ),
            ("/proc", "cannot mount on or under /proc"),
            ("/sys/fs", "cannot mount on or under /sys"),
            ("/dev/shm", "cannot mount on or under /dev"),
            ("/etc", "cannot mount on or under /etc"),
            ("/data\nx", "no control characters"),
        ];
        for (path, message) in cases {
            assert_eq!(
                problems(with_datasets(vec![ds("d", None, path)])),
                vec![("datasets[0].path".to_string(), message.to_string())],
                "{path:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_DATASET_PATH));
        assert_eq!(
            problems(with_datasets(vec![ds("d", None, &long)])),
            vec![("datasets[0].path".into(), "at most 256 bytes".into())]
        );
        // Near misses are fine: `/devices` is not under `/dev`.
        let max = format!("/{}", "a".repeat(MAX_DATASET_PATH - 1));
        for ok in [
            "/devices",
            "/procedures/x",
            "/home/jovyan/data",
            "/etcetera",
            &max,
        ] {
            assert!(with_datasets(vec![ds("d", None, ok)]).is_ok(), "{ok}");
        }
    }

    #[test]
    fn dataset_mounts_may_not_overlap_or_be_too_many() {
        let r = with_datasets(vec![
            ds("a", None, "/data"),
            ds("b", None, "/data2"),
            ds("c", None, "/data"),
            ds("d", None, "/data/inner"),
            ds("e", None, "/"),
            ds("f", None, "/srv"),
        ]);
        assert_eq!(
            problems(r),
            vec![
                (
                    "datasets[2].path".into(),
                    "/data is already the mount point of datasets[0]".into()
                ),
                (
                    "datasets[3].path".into(),
                    "/data/inner and datasets[0]'s /data are nested; mount points must be apart"
                        .into()
                ),
                (
                    "datasets[4].path".into(),
                    "cannot mount over the container's root".into()
                ),
            ]
        );
        // The outer one second: still nested.
        assert_eq!(
            problems(with_datasets(vec![
                ds("a", None, "/data/x"),
                ds("b", None, "/data")
            ]))[0]
                .0,
            "datasets[1].path"
        );
        let many = |n: usize| {
            (0..n)
                .map(|i| ds("d", None, &format!("/data/{i}")))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            with_datasets(many(MAX_INSTANCE_DATASETS))
                .unwrap()
                .datasets
                .len(),
            16
        );
        assert_eq!(
            problems(with_datasets(many(MAX_INSTANCE_DATASETS + 1))),
            vec![("datasets".into(), "at most 16 datasets, got 17".into())]
        );
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
