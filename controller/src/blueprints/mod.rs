//! Blueprints: the templates an administrator defines and users launch.
//!
//! * [`spec`] — the blueprint's fields and their validation, with an error per field.
//! * [`catalog`] — blueprints in the store; every edit is a new revision, and old
//!   revisions stay readable because instances record the one they started from.
//!   A blueprint's image is resolved (tag → digest) through an [`ImageResolver`]
//!   before it is saved, and again on refresh.

pub mod catalog;
pub mod spec;

pub use catalog::{BlueprintRecord, Catalog, CatalogError, ImageResolver};
pub use spec::{AppKind, BlueprintInput, BlueprintSpec, FieldError};
