//! Bytes from the controller's chunk store, as datasets and image archives use them.
//!
//! * [`fetch`] — manifests (whole or as a delta) and chunks over the link, each
//!   verified and written straight into the tree being assembled; resumable,
//!   several streams at once.

pub mod fetch;
