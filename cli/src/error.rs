//! What can go wrong, how it reads on stderr, and which exit code it maps to.
//!
//! Every failure of a command becomes one [`Error`]. [`Error::exit_code`] is the only
//! place where failures turn into exit codes, and [`report`] the only place where they
//! turn into the text printed on stderr: one line `error: <message>`, followed only by
//! the field-level problems of a refused request body, one per line.

use std::path::PathBuf;

/// Exit codes of `cairn` (2, bad usage, is clap's own).
pub mod exit {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNAUTHENTICATED: u8 = 3;
    pub const FORBIDDEN: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const CONFLICT: u8 = 6;
    pub const INVALID: u8 = 7;
    pub const UNREACHABLE: u8 = 69;
}

/// One problem with one field of a request body, as the API reports it.
pub use cairn_api::error::FieldError;

/// An error answer of the API: `{"error": {"code", "message", "fields"?}}` and its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub fields: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No token to send: nobody logged in and none given.
    #[error("not logged in to {url}{hint}; run `cairn login` or set CAIRN_TOKEN")]
    NotLoggedIn { url: String, hint: String },

    /// The controller answered with an error.
    #[error("{}", api_headline(.0))]
    Api(ApiError),

    /// The controller could not be reached at all.
    #[error(
        "cannot reach the controller at {url}: {detail} (is it running? set --url or CAIRN_URL)"
    )]
    Unreachable { url: String, detail: String },

    /// Any other failure of the HTTP exchange, or an answer the CLI cannot read.
    #[error("{0}")]
    Http(String),

    /// Bad use that clap cannot see, such as an invalid `--url`.
    #[error("{0}")]
    Usage(String),

    /// A local input file or value is unusable (e.g. a blueprint file that does not parse).
    #[error("{0}")]
    Input(String),

    /// The config file could not be read or written.
    #[error("config file {}: {message}", .path.display())]
    Config { path: PathBuf, message: String },

    /// An instance that was waited for failed.
    #[error("instance {id} {state}: {reason}")]
    InstanceFailed {
        id: String,
        state: String,
        reason: String,
    },

    /// Waiting for an instance took too long.
    #[error(
        "instance {id} still {state} after {waited}; it keeps going: follow it with `cairn ps`"
    )]
    WaitTimeout {
        id: String,
        state: String,
        waited: String,
    },

    /// Reading the terminal or standard input failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// Writing to stdout failed (e.g. a closed pipe).
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),
}

impl Error {
    /// The exit code of the process for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotLoggedIn { .. } => exit::UNAUTHENTICATED,
            Error::Api(e) => match e.status {
                401 => exit::UNAUTHENTICATED,
                403 => exit::FORBIDDEN,
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                400 | 422 => exit::INVALID,
                _ => exit::OTHER,
            },
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::Usage(_) => exit::USAGE,
            Error::Input(_) => exit::INVALID,
            Error::Http(_)
            | Error::Config { .. }
            | Error::InstanceFailed { .. }
            | Error::WaitTimeout { .. }
            | Error::Io { .. }
            | Error::Output(_) => exit::OTHER,
        }
    }

    /// Whether this is stdout going away under us (`cairn ps | head -1`): not worth
    /// a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// The one-line message of an API error. With field errors, the controller's message
/// repeats them after the first `": "` (`invalid blueprint: name: ...; image: ...`);
/// they are printed one per line instead, so only the part before is kept.
fn api_headline(e: &ApiError) -> String {
    let msg = if e.fields.is_empty() {
        e.message.as_str()
    } else {
        e.message
            .split_once(": ")
            .map_or(e.message.as_str(), |(head, _)| head)
    };
    let mut msg = one_line(msg);
    if msg.is_empty() {
        msg = format!("the controller answered HTTP {} ({})", e.status, e.code);
    }
    match (e.status, e.code.as_str()) {
        (401, "unauthenticated") => format!("{msg}; run `cairn login`"),
        _ => msg,
    }
}

/// Collapses every run of whitespace (newlines included) into one space, so a message
/// from the server always fits on the single `error:` line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The full text for stderr: `error: <message>\n`, then `  field: message\n` per field
/// error of a refused request body.
pub fn report(e: &Error) -> String {
    let mut out = format!("error: {}\n", one_line(&e.to_string()));
    if let Error::Api(api) = e {
        for f in &api.fields {
            out.push_str(&format!(
                "  {}: {}\n",
                one_line(&f.field),
                one_line(&f.message)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> Error {
        Error::Api(ApiError {
            status,
            code: code.into(),
            message: "m".into(),
            fields: vec![],
        })
    }

    #[test]
    fn every_failure_maps_to_its_exit_code() {
        let cases: Vec<(Error, u8)> = vec![
            (
                Error::NotLoggedIn {
                    url: "u".into(),
                    hint: String::new(),
                },
                3,
            ),
            (api(401, "unauthenticated"), 3),
            (api(401, "login_failed"), 3),
            (api(403, "forbidden"), 4),
            (api(404, "not_found"), 5),
            (api(409, "limit_reached"), 6),
            (api(409, "already_exists"), 6),
            (api(400, "invalid_blueprint"), 7),
            (api(422, "whatever"), 7),
            (api(500, "internal"), 1),
            (api(502, "bad_gateway"), 1),
            (
                Error::Unreachable {
                    url: "u".into(),
                    detail: "d".into(),
                },
                69,
            ),
            (Error::Http("x".into()), 1),
            (Error::Usage("x".into()), 2),
            (Error::Input("x".into()), 7),
            (
                Error::Config {
                    path: "p".into(),
                    message: "m".into(),
                },
                1,
            ),
            (
                Error::InstanceFailed {
                    id: "i".into(),
                    state: "failed".into(),
                    reason: "r".into(),
                },
                1,
            ),
            (Error::Output(std::io::ErrorKind::BrokenPipe.into()), 1),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e:?}");
        }
    }

    #[test]
    fn field_errors_print_one_per_line_after_a_short_headline() {
        let e = Error::Api(ApiError {
            status: 400,
            code: "invalid_blueprint".into(),
            message: "invalid blueprint: name: required; image: required".into(),
            fields: vec![
                FieldError {
                    field: "name".into(),
                    message: "required".into(),
                },
                FieldError {
                    field: "image".into(),
                    message: "required: the image".into(),
                },
            ],
        });
        assert_eq!(
            report(&e),
            "error: invalid blueprint\n  name: required\n  image: required: the image\n"
        );
    }

    #[test]
    fn reports_are_one_line_and_say_what_to_do() {
        let e = Error::Api(ApiError {
            status: 401,
            code: "unauthenticated".into(),
            message: "invalid, expired\nor revoked token".into(),
            fields: vec![],
        });
        assert_eq!(
            report(&e),
            "error: invalid, expired or revoked token; run `cairn login`\n"
        );
        let e = Error::Unreachable {
            url: "http://127.0.0.1:1".into(),
            detail: "connection refused".into(),
        };
        let r = report(&e);
        assert_eq!(r.lines().count(), 1);
        assert!(r.starts_with("error: cannot reach the controller at http://127.0.0.1:1: connection refused (is it running? set --url or CAIRN_URL)"), "{r}");
        let e = Error::Api(ApiError {
            status: 503,
            code: "unavailable".into(),
            message: String::new(),
            fields: vec![],
        });
        assert_eq!(
            report(&e),
            "error: the controller answered HTTP 503 (unavailable)\n"
        );
    }
}
