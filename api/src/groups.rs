//! Groups (courses, projects) as the API shows them: their people and roles, the
//! limits on what their managers may build, quotas, join codes, usage, and the
//! audit log of admin, manager and login actions.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The group every account is in, and the owner of blueprints that name no group.
pub const DEFAULT_GROUP: &str = "everyone";

/// A person's place in a group.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum GroupRole {
    /// Sees and launches the group's blueprints.
    Member,
    /// Also edits the group's blueprints, sees and stops members' instances, manages
    /// join codes and members, and reads usage.
    Manager,
    /// Also renames, sets the expiry and hands the group over.
    Owner,
}

impl GroupRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRole::Member => "member",
            GroupRole::Manager => "manager",
            GroupRole::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(GroupRole::Member),
            "manager" => Some(GroupRole::Manager),
            "owner" => Some(GroupRole::Owner),
            _ => None,
        }
    }
}

impl std::fmt::Display for GroupRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits of one scope (the whole group, or each member); absent is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Quota {
    /// Instances running (or starting) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// Memory of those instances, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Credits: a blueprint's `cost` × hours running, summed over the group's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<f64>,
}

/// What an admin lets a group's managers put in its blueprints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlueprintLimits {
    /// Images the group's blueprints may run: exact references, or prefixes ending
    /// in `*` (`registry.example/course/*`). Empty: managers may not create or edit
    /// blueprints at all.
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_secs: Option<u64>,
}

/// A member as managers see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupMember {
    pub user: String,
    pub role: GroupRole,
    pub joined_ms: u64,
}

/// A group (`GET /api/v1/groups/{name}`). Members, codes and limits are shown to
/// its managers and admins; a member sees the group and their own role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub name: String,
    pub title: String,
    /// When the course ends: memberships lapse (the owner's too) and members'
    /// instances are stopped. Admins keep access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    pub created_ms: u64,
    /// The caller's role (`None` for an admin who is not in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<GroupRole>,
    /// Limits of the whole group.
    pub quota: Quota,
    /// Limits of each member within the group.
    pub member_quota: Quota,
    pub limits: BlueprintLimits,
    /// Instances of the group's blueprints idle this long are stopped (a
    /// blueprint's own `idle_timeout_secs` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Blueprints of other groups its members may launch too.
    #[serde(default)]
    pub granted: Vec<String>,
    /// The people in it (managers and admins only; empty for others). The default
    /// group lists only those with a role above member: everyone is a member.
    #[serde(default)]
    pub members: Vec<GroupMember>,
}

/// Body of `POST /api/v1/groups` (admins) and `PATCH /api/v1/groups/{name}`:
/// absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    /// Required when creating: 1-63 characters of a-z, 0-9 and '-'.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    /// The account that owns it (admins only; required when creating).
    #[serde(default)]
    pub owner: Option<String>,
    /// Milliseconds since the epoch; 0 removes the expiry.
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// Admins only.
    #[serde(default)]
    pub quota: Option<Quota>,
    /// Admins only.
    #[serde(default)]
    pub member_quota: Option<Quota>,
    /// Admins only.
    #[serde(default)]
    pub limits: Option<BlueprintLimits>,
    /// Seconds; 0 removes it.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// Admins only: the blueprints of other groups its members may launch.
    #[serde(default)]
    pub granted: Option<Vec<String>>,
}

/// Body of `PUT /api/v1/groups/{name}/members/{user}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberInput {
    pub role: GroupRole,
}

/// What removing a member or leaving did: the instances it stopped, with the reason
/// they were given (nothing is stopped silently).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Departure {
    pub group: String,
    pub user: String,
    pub stopped: Vec<String>,
    pub reason: String,
}

/// A join code (`POST /api/v1/groups/{name}/code` makes a new one and retires
/// the old).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinCode {
    pub group: String,
    pub code: String,
    pub expires_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    pub uses: u32,
}

/// Body of `POST /api/v1/groups/{name}/code`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinCodeInput {
    /// How long it is valid, seconds (default 7 days, at most 365 days).
    #[serde(default)]
    pub valid_secs: Option<u64>,
    /// How many people may use it (default unlimited).
    #[serde(default)]
    pub max_uses: Option<u32>,
}

/// Body of `POST /api/v1/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinInput {
    pub code: String,
}

/// One person's use of one group (`GET /api/v1/groups/{name}/usage`, `GET
/// /api/v1/usage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    pub group: String,
    pub user: String,
    /// Instances running or starting now.
    pub instances: u32,
    pub memory_mib: u64,
    /// Credits spent so far (running instances count up to now).
    pub credits: f64,
    /// Instances launched in all.
    pub launches: u32,
}

/// Usage with the limits beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub group: String,
    pub quota: Quota,
    pub member_quota: Quota,
    /// The group's totals.
    pub total: UsageRow,
    pub rows: Vec<UsageRow>,
}

/// One entry of the audit log (`GET /api/v1/audit`, admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Who acted (`admin` for the bootstrap token, `-` for nobody logged in).
    pub actor: String,
    /// What they did, e.g. `group.member.remove`, `login.failed`.
    pub action: String,
    /// What it was done to, e.g. `course-a/bob`.
    pub target: String,
    /// The client's address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Anything worth keeping beside it (a reason, a role).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}
