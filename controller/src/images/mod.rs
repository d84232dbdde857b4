//! Image distribution, the controller's side.
//!
//! * [`plan`] — which images each host should hold (pre-pull), pure.
//! * [`archives`] — pushed `docker save` archives on the chunk store: the commit's
//!   checks, the records, the chunk lists agents' fetches are served from.
//! * [`chunked`] — an archive's chunks read back as one `Read + Seek` file.
//! * [`inspect`] — what a `docker save` archive holds, or why Docker could not load
//!   it; pure.
//! * [`reference`] — image references: [`cairn_shared::reference`], re-exported here
//!   because the agent parses them the same way.
//! * [`registry`] — a client for the registry HTTP API v2: tag → manifest digest,
//!   with Basic and Bearer-token logins; registry credentials for agents.
//! * [`resolve`] — a blueprint's image → what instances run (digest, uploaded image
//!   id, or the name as written), when the blueprint is saved or refreshed.

pub mod archives;
pub mod chunked;
pub mod inspect;
pub mod plan;
pub use cairn_shared::reference;
pub mod registry;
pub mod resolve;
