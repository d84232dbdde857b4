//! Image distribution, the controller's side.
//!
//! * [`plan`] — which images each host should hold (pre-pull), pure.
//! * [`archives`] — uploaded `docker save` archives: resumable uploads, verification,
//!   the committed archives agents fetch over the link.
//! * [`inspect`] — what a `docker save` archive holds, or why Docker could not load
//!   it; pure.
//! * [`reference`] — image references: [`cairn_shared::reference`], re-exported here
//!   because the agent parses them the same way.
//! * [`registry`] — a client for the registry HTTP API v2: tag → manifest digest,
//!   with Basic and Bearer-token logins; registry credentials for agents.
//! * [`resolve`] — a blueprint's image → what instances run (digest, uploaded image
//!   id, or the name as written), when the blueprint is saved or refreshed.

pub mod archives;
pub mod inspect;
pub mod plan;
pub use cairn_shared::reference;
pub mod registry;
pub mod resolve;
