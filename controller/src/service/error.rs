//! The service layer's one error type: what went wrong, in words for people
//! (`message`) and a stable code for programs (`code`), with a [`Kind`] each door
//! maps to its own answer (an HTTP status, an error page, an exit code).

use crate::blueprints::spec::FieldError;
use crate::store::StoreError;

/// The class of a failure; doors map it to their answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No valid credential (HTTP 401).
    Unauthenticated,
    /// Known caller, not allowed (403).
    Forbidden,
    /// No such thing, or not the caller's to see (404).
    NotFound,
    /// A malformed or out-of-bounds request (400).
    Invalid,
    /// The request conflicts with the current state or a limit (409).
    Conflict,
    /// Too many attempts; `retry_after_secs` says when to try again (429).
    Throttled,
    /// More bytes than allowed (413).
    TooLarge,
    /// Well-formed, but the content is unusable (422).
    Unprocessable,
    /// A host's agent answered with an error (502).
    AgentError,
    /// A host's agent did not answer in time (504).
    AgentTimeout,
    /// A needed host or the store cannot be reached now (503).
    Unavailable,
    /// The controller's disk is full (507).
    StorageFull,
    /// A bug or a store failure, logged where it happened (500).
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    pub kind: Kind,
    /// Stable, for programs: `not_found`, `limit_reached`, `invalid_blueprint`…
    pub code: &'static str,
    /// For people: what happened and, where there is one, what to do.
    pub message: String,
    /// Field-level problems of an invalid request body.
    pub fields: Vec<FieldError>,
    /// For [`Kind::Throttled`]: when another attempt may succeed.
    pub retry_after_secs: Option<u64>,
}

impl ServiceError {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        ServiceError {
            kind,
            code,
            message: message.into(),
            fields: vec![],
            retry_after_secs: None,
        }
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Kind::Unauthenticated, "unauthenticated", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, "not_found", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, "invalid_request", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }
    /// A failure inside the controller: logged here with its detail; the caller
    /// gets a sentence pointing at the log.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            Kind::Internal,
            "internal",
            "internal error; see the controller's log",
        )
    }
    pub fn with_fields(mut self, fields: Vec<FieldError>) -> Self {
        self.fields = fields;
        self
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            // Someone else wrote the record between our read and our write: the
            // caller may read again and retry.
            StoreError::Conflict { .. } => {
                ServiceError::conflict("changed_meanwhile", e.to_string())
            }
            e => ServiceError::internal(e),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
