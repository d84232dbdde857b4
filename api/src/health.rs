//! `GET /healthz`: the process is up, and how many hosts and instances are in each
//! state.

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
    pub hosts: HashMap<HostState, usize>,
    pub instances: BTreeMap<InstanceState, usize>,
}
