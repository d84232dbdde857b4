//! Where the controller's URL and the API token come from, and the config file that
//! `cairn login` writes.
//!
//! Precedence, highest first: the `--url`/`--token` flags, the `CAIRN_URL`/
//! `CAIRN_TOKEN` environment variables, the config file, and for the URL the default
//! [`DEFAULT_URL`]. The config file is `--config PATH`, else `$CAIRN_CONFIG`, else
//! `$XDG_CONFIG_HOME/cairn/config.toml`, else `~/.config/cairn/config.toml`.
//!
//! The token saved in the file belongs to the URL saved with it: it is not sent to a
//! different controller named by a flag or the environment.
//!
//! The file holds a secret, so it is written with mode 0600, atomically (a temporary
//! file in the same directory, then a rename), and its directory is created 0700.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where the controller's API listens unless told otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7080";

/// The config file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Where a setting came from (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

/// The settings a command runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub url_source: Source,
    pub token: Option<String>,
    pub token_source: Option<Source>,
    /// Set when the config file has a token that was not used because it belongs to
    /// another URL: that URL.
    pub token_withheld_for: Option<String>,
}

/// The raw inputs of [`resolve`].
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub flag_url: Option<String>,
    pub flag_token: Option<String>,
    pub env_url: Option<String>,
    pub env_token: Option<String>,
    pub file: ConfigFile,
}

impl Inputs {
    /// The flags, the process environment, and the file.
    pub fn gather(flag_url: Option<String>, flag_token: Option<String>, file: ConfigFile) -> Self {
        Inputs {
            flag_url,
            flag_token,
            env_url: env_var("CAIRN_URL"),
            env_token: env_var("CAIRN_TOKEN"),
            file,
        }
    }
}

/// An environment variable, with empty counting as unset.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A URL in the form used for comparison and for building request URLs: trimmed,
/// without trailing slashes.
pub fn normalize_url(u: &str) -> String {
    u.trim().trim_end_matches('/').to_string()
}

/// Applies the precedence rules.
pub fn resolve(i: &Inputs) -> Settings {
    let file_url = nonempty(&i.file.url);
    let (url, url_source) = if let Some(u) = nonempty(&i.flag_url) {
        (u, Source::Flag)
    } else if let Some(u) = nonempty(&i.env_url) {
        (u, Source::Env)
    } else if let Some(u) = file_url.clone() {
        (u, Source::File)
    } else {
        (DEFAULT_URL.to_string(), Source::Default)
    };
    let url = normalize_url(&url);

    let mut withheld = None;
    let (token, token_source) = if let Some(t) = nonempty(&i.flag_token) {
        (Some(t), Some(Source::Flag))
    } else if let Some(t) = nonempty(&i.env_token) {
        (Some(t), Some(Source::Env))
    } else if let Some(t) = nonempty(&i.file.token) {
        let token_url = normalize_url(file_url.as_deref().unwrap_or(DEFAULT_URL));
        if token_url == url {
            (Some(t), Some(Source::File))
        } else {
            withheld = Some(token_url);
            (None, None)
        }
    } else {
        (None, None)
    };
    Settings {
        url,
        url_source,
        token,
        token_source,
        token_withheld_for: withheld,
    }
}

/// Where the config file is: `explicit` (the `--config` flag), else `$CAIRN_CONFIG`,
/// else `$XDG_CONFIG_HOME/cairn/config.toml` (when absolute), else
/// `$HOME/.config/cairn/config.toml`. `env` looks up environment variables.
pub fn config_path(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = env("CAIRN_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = env("XDG_CONFIG_HOME").map(PathBuf::from) {
        // The XDG spec says relative values are to be ignored.
        if x.is_absolute() {
            return Ok(x.join("cairn").join("config.toml"));
        }
    }
    match env("HOME") {
        Some(h) => Ok(PathBuf::from(h)
            .join(".config")
            .join("cairn")
            .join("config.toml")),
        None => Err(Error::Usage(
            "cannot tell where the config file goes: HOME is not set (use --config PATH or CAIRN_CONFIG)".into(),
        )),
    }
}

/// Reads the config file; a missing file is an empty config.
pub fn load(path: &Path) -> Result<ConfigFile, Error> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => {
            return Err(Error::Config {
                path: path.into(),
                message: e.to_string(),
            })
        }
    };
    toml::from_str(&text).map_err(|e| Error::Config {
        path: path.into(),
        message: crate::error::one_line(&e.to_string()),
    })
}

/// Writes the config file: mode 0600, atomically, creating its directory (0700) if
/// needed.
pub fn save(path: &Path, cfg: &ConfigFile) -> Result<(), Error> {
    let fail = |message: String| Error::Config {
        path: path.into(),
        message,
    };
    let text = toml::to_string(cfg).map_err(|e| fail(e.to_string()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(format!("setting the mode of {}: {e}", dir.display())))?;
    }
    write_private(path, dir, text.as_bytes()).map_err(|e| fail(e.to_string()))
}

fn write_private(path: &Path, dir: &Path, data: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask and ignored for a file
        // that already existed; set it exactly before writing the secret.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = ConfigFile {
            url: s("http://file:7080"),
            token: s("file-token"),
        };
        let all = Inputs {
            flag_url: s("http://flag:7080/"),
            flag_token: s("flag-token"),
            env_url: s("http://env:7080"),
            env_token: s("env-token"),
            file: file.clone(),
        };
        let r = resolve(&all);
        assert_eq!(r.url, "http://flag:7080");
        assert_eq!(r.url_source, Source::Flag);
        assert_eq!(r.token.as_deref(), Some("flag-token"));
        assert_eq!(r.token_source, Some(Source::Flag));

        let r = resolve(&Inputs {
            flag_url: None,
            flag_token: None,
            ..all.clone()
        });
        assert_eq!(
            (r.url.as_str(), r.token.as_deref()),
            ("http://env:7080", Some("env-token"))
        );
        assert_eq!(r.url_source, Source::Env);

        let r = resolve(&Inputs {
            file: file.clone(),
            ..Inputs::default()
        });
        assert_eq!(
            (r.url.as_str(), r.token.as_deref()),
            ("http://file:7080", Some("file-token"))
        );
        assert_eq!(
            (r.url_source, r.token_source),
            (Source::File, Some(Source::File))
        );

        let r = resolve(&Inputs::default());
        assert_eq!((r.url.as_str(), r.token.as_deref()), (DEFAULT_URL, None));
        assert_eq!(r.url_source, Source::Default);
    }

    #[test]
    fn empty_values_count_as_unset() {
        let r = resolve(&Inputs {
            flag_url: s(""),
            env_url: s("  "),
            env_token: s(""),
            file: ConfigFile {
                url: s("http://file:1"),
                token: s("t"),
            },
            ..Inputs::default()
        });
        assert_eq!(
            (r.url.as_str(), r.token.as_deref()),
            ("http://file:1", Some("t"))
        );
    }

    #[test]
    fn the_saved_token_is_only_sent_to_its_own_url() {
        let file = ConfigFile {
            url: s("http://file:7080/"),
            token: s("file-token"),
        };
        // Same controller named again (trailing slash aside): the token goes along.
        let r = resolve(&Inputs {
            env_url: s("http://file:7080"),
            file: file.clone(),
            ..Inputs::default()
        });
        assert_eq!(r.token.as_deref(), Some("file-token"));
        // Another controller: not sent, and the reason is kept for the message.
        let r = resolve(&Inputs {
            flag_url: s("http://elsewhere:7080"),
            file: file.clone(),
            ..Inputs::default()
        });
        assert_eq!(r.token, None);
        assert_eq!(r.token_withheld_for.as_deref(), Some("http://file:7080"));
        // A token given explicitly is always used.
        let r = resolve(&Inputs {
            flag_url: s("http://elsewhere:7080"),
            env_token: s("env"),
            file,
            ..Inputs::default()
        });
        assert_eq!(r.token.as_deref(), Some("env"));
        // A file token without a URL belongs to the default URL.
        let r = resolve(&Inputs {
            file: ConfigFile {
                url: None,
                token: s("t"),
            },
            ..Inputs::default()
        });
        assert_eq!(
            (r.url.as_str(), r.token.as_deref()),
            (DEFAULT_URL, Some("t"))
        );
    }

    #[test]
    fn config_path_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let all: &[(&str, &str)] = &[
            ("CAIRN_CONFIG", "/c/config.toml"),
            ("XDG_CONFIG_HOME", "/x"),
            ("HOME", "/home/a"),
        ];
        assert_eq!(
            config_path(Some(Path::new("/flag.toml")), env(all)).unwrap(),
            PathBuf::from("/flag.toml")
        );
        assert_eq!(
            config_path(None, env(all)).unwrap(),
            PathBuf::from("/c/config.toml")
        );
        assert_eq!(
            config_path(None, env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/home/a")])).unwrap(),
            PathBuf::from("/x/cairn/config.toml")
        );
        assert_eq!(
            config_path(
                None,
                env(&[("XDG_CONFIG_HOME", "relative"), ("HOME", "/home/a")])
            )
            .unwrap(),
            PathBuf::from("/home/a/.config/cairn/config.toml")
        );
        assert_eq!(
            config_path(None, env(&[("CAIRN_CONFIG", ""), ("HOME", "/home/a")])).unwrap(),
            PathBuf::from("/home/a/.config/cairn/config.toml")
        );
        assert!(matches!(config_path(None, env(&[])), Err(Error::Usage(_))));
    }

    #[test]
    fn save_is_private_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub").join("config.toml");
        assert_eq!(load(&path).unwrap(), ConfigFile::default());
        let cfg = ConfigFile {
            url: s("http://h:1"),
            token: s("secret"),
        };
        save(&path, &cfg).unwrap();
        assert_eq!(load(&path).unwrap(), cfg);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // Overwriting a file that had a looser mode leaves it private too.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        save(
            &path,
            &ConfigFile {
                url: s("http://h:1"),
                token: None,
            },
        )
        .unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load(&path).unwrap().token, None);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_garbled_file_is_a_config_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        fs::write(&path, "url = [").unwrap();
        assert!(matches!(load(&path), Err(Error::Config { .. })));
    }
}
