//! `GET /healthz`: the process is up and its store takes writes; with an admin's
//! token, how many hosts and instances are in each state.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::hosts::HostState;
use crate::instances::InstanceState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The controller's version.
    pub version: String,
    /// `writable`: a write was made durable just now.
    pub store: String,
    /// Admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<HashMap<HostState, usize>>,
    /// Admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<BTreeMap<InstanceState, usize>>,
}
