//! What operations answer with: the API model's types (`cairn-api`), built in the
//! service layer once so the REST API and the web pages show the same facts (time
//! left, app kind, queue position, secrets only to the owner).

pub use cairn_api::autoscaler::{AutoscalerView, Waiting};
pub use cairn_api::blueprints::Refreshed;
pub use cairn_api::health::Health;
pub use cairn_api::instances::{AppView, InstanceDataset, InstanceView};
pub use cairn_api::join_tokens::{CreatedTokenView, JoinTokenView};
pub use cairn_api::session::{ApiTokenView, LoginResponse};
