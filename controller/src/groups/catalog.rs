//! The stored groups: one record per group in the store's `groups` tree (its
//! people, join code, quotas and limits), with a copy in memory that every
//! permission check reads. The store is the truth: a change is written and made
//! durable before the copy changes and before anyone is told.
//!
//! The default group (`everyone`) is created at start; every account is its member
//! without being listed (only roles above member are stored for it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use cairn_api::groups::{BlueprintLimits, GroupRole, Quota, DEFAULT_GROUP};
use serde::{Deserialize, Serialize};

use super::core::{self, Membership, Role};
use crate::store::{Store, StoreError, Tree};

/// A member as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub role: GroupRole,
    pub joined_ms: u64,
}

/// A join code as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCode {
    pub code: String,
    pub expires_ms: u64,
    #[serde(default)]
    pub max_uses: Option<u32>,
    pub uses: u32,
}

/// How many replaced codes a group remembers, to answer "this code was replaced"
/// instead of "no such code".
const RETIRED_CODES: usize = 8;

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    pub created_ms: u64,
    #[serde(default)]
    pub members: BTreeMap<String, Member>,
    #[serde(default)]
    pub quota: Quota,
    #[serde(default)]
    pub member_quota: Quota,
    #[serde(default)]
    pub limits: BlueprintLimits,
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    #[serde(default)]
    pub granted: BTreeSet<String>,
    #[serde(default)]
    pub code: Option<StoredCode>,
    #[serde(default)]
    pub retired_codes: Vec<String>,
}

impl GroupRecord {
    pub fn new(name: &str, title: &str, now_ms: u64) -> Self {
        GroupRecord {
            name: name.to_string(),
            title: title.to_string(),
            expires_ms: None,
            created_ms: now_ms,
            members: BTreeMap::new(),
            quota: Quota::default(),
            member_quota: Quota::default(),
            limits: BlueprintLimits::default(),
            idle_timeout_secs: None,
            granted: BTreeSet::new(),
            code: None,
            retired_codes: vec![],
        }
    }

    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_GROUP
    }

    /// `user`'s membership as the rules see it: their stored role (a member of the
    /// default group when unlisted), ending when the group does.
    pub fn membership(&self, user: &str) -> Option<Membership> {
        let role = match self.members.get(user) {
            Some(m) => m.role,
            None if self.is_default() => GroupRole::Member,
            None => return None,
        };
        Some(Membership {
            role,
            expires_ms: self.expires_ms,
        })
    }

    /// `user`'s role at `now` (`None`: not in it, or the group ended).
    pub fn role_at(&self, user: &str, now_ms: u64) -> Option<Role> {
        core::role_at(self.membership(user), now_ms)
    }

    /// The group's owner (the first listed, if an admin made several).
    pub fn owner(&self) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, m)| m.role == GroupRole::Owner)
            .map(|(u, _)| u.as_str())
    }
}

/// The groups, in the store and in memory.
#[derive(Debug)]
pub struct Groups {
    store: Store,
    cache: RwLock<BTreeMap<String, GroupRecord>>,
    /// Serialises read-modify-write of records.
    write: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    #[error("no group named {0:?}")]
    NotFound(String),
    #[error("a group named {0:?} already exists")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Groups {
    /// Loads every group, creating the default group if the store has none.
    pub fn open(store: Store, now_ms: u64) -> Result<Self, StoreError> {
        let mut cache: BTreeMap<String, GroupRecord> = store
            .all::<GroupRecord>(Tree::Groups)?
            .into_iter()
            .map(|g| (g.name.clone(), g))
            .collect();
        if !cache.contains_key(DEFAULT_GROUP) {
            let g = GroupRecord::new(DEFAULT_GROUP, "Everyone", now_ms);
            store.put(Tree::Groups, DEFAULT_GROUP, &g)?;
            store.flush_blocking()?;
            cache.insert(DEFAULT_GROUP.to_string(), g);
        }
        Ok(Groups {
            store,
            cache: RwLock::new(cache),
            write: tokio::sync::Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, GroupRecord>> {
        // A panic while holding the lock leaves the map as it was before the
        // write (writes replace whole records), so a poisoned lock is still sound.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<GroupRecord> {
        self.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<GroupRecord> {
        self.read().values().cloned().collect()
    }

    /// The groups `user` has a live role in at `now`, with the role.
    pub fn of_user(&self, user: &str, now_ms: u64) -> Vec<(GroupRecord, Role)> {
        self.read()
            .values()
            .filter_map(|g| g.role_at(user, now_ms).map(|r| (g.clone(), r)))
            .collect()
    }

    /// The group whose current code is `code`, or whose replaced codes include it
    /// (`(group, replaced)`).
    pub fn by_code(&self, code: &str) -> Option<(GroupRecord, bool)> {
        let groups = self.read();
        if let Some(g) = groups
            .values()
            .find(|g| g.code.as_ref().is_some_and(|c| c.code == code))
        {
            return Some((g.clone(), false));
        }
        groups
            .values()
            .find(|g| g.retired_codes.iter().any(|c| c == code))
            .map(|g| (g.clone(), true))
    }

    pub async fn create(&self, record: GroupRecord) -> Result<GroupRecord, GroupsError> {
        let _w = self.write.lock().await;
        if self.read().contains_key(&record.name) {
            return Err(GroupsError::Exists(record.name));
        }
        self.save(record).await
    }

    /// Applies `change` to the stored record (it answers `Err` to refuse, and the
    /// record stays as it was) and saves the result durably.
    pub async fn modify<T, E: From<GroupsError>>(
        &self,
        name: &str,
        change: impl FnOnce(&mut GroupRecord) -> Result<T, E>,
    ) -> Result<(GroupRecord, T), E> {
        let _w = self.write.lock().await;
        let mut record = self
            .get(name)
            .ok_or_else(|| GroupsError::NotFound(name.to_string()))?;
        let out = change(&mut record)?;
        let saved = self.save(record).await?;
        Ok((saved, out))
    }

    pub async fn remove(&self, name: &str) -> Result<GroupRecord, GroupsError> {
        let _w = self.write.lock().await;
        let record = self
            .get(name)
            .ok_or_else(|| GroupsError::NotFound(name.to_string()))?;
        self.store.remove(Tree::Groups, name)?;
        self.store.flush().await?;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(record)
    }

    async fn save(&self, record: GroupRecord) -> Result<GroupRecord, GroupsError> {
        self.store.put(Tree::Groups, &record.name, &record)?;
        self.store.flush().await?;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.name.clone(), record.clone());
        Ok(record)
    }
}

/// Replaces `g`'s code with `code`, remembering the old one as replaced.
pub fn replace_code(g: &mut GroupRecord, code: StoredCode) {
    if let Some(old) = g.code.take() {
        g.retired_codes.push(old.code);
        let excess = g.retired_codes.len().saturating_sub(RETIRED_CODES);
        g.retired_codes.drain(..excess);
    }
    g.code = Some(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn groups_survive_a_restart_and_the_default_group_holds_everyone() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = Store::open(tmp.path()).unwrap();
            let groups = Groups::open(store, 1).unwrap();
            let mut g = GroupRecord::new("course-a", "Course A", 1);
            g.members.insert(
                "tina".into(),
                Member {
                    role: GroupRole::Owner,
                    joined_ms: 1,
                },
            );
            g.expires_ms = Some(100);
            groups.create(g).await.unwrap();
            assert!(matches!(
                groups
                    .create(GroupRecord::new("course-a", "again", 2))
                    .await,
                Err(GroupsError::Exists(_))
            ));
        }
        let store = Store::open(tmp.path()).unwrap();
        let groups = Groups::open(store, 5).unwrap();
        let a = groups.get("course-a").unwrap();
        assert_eq!(a.owner(), Some("tina"));
        assert_eq!(a.role_at("tina", 99), Some(Role::Owner));
        assert_eq!(a.role_at("tina", 100), None, "the course ended");
        assert_eq!(a.role_at("sam", 50), None);
        let everyone = groups.get(DEFAULT_GROUP).unwrap();
        assert_eq!(everyone.role_at("sam", u64::MAX), Some(Role::Member));
        let mine: Vec<_> = groups
            .of_user("tina", 50)
            .into_iter()
            .map(|(g, r)| (g.name, r))
            .collect();
        assert_eq!(
            mine,
            vec![
                ("course-a".to_string(), Role::Owner),
                (DEFAULT_GROUP.to_string(), Role::Member)
            ]
        );
    }

    #[test]
    fn a_replaced_code_is_remembered_a_while() {
        let mut g = GroupRecord::new("g", "G", 0);
        for i in 0..20 {
            replace_code(
                &mut g,
                StoredCode {
                    code: format!("c{i}"),
                    expires_ms: 10,
                    max_uses: None,
                    uses: 0,
                },
            );
        }
        assert_eq!(g.code.as_ref().unwrap().code, "c19");
        assert_eq!(g.retired_codes.len(), RETIRED_CODES);
        assert_eq!(g.retired_codes.last().unwrap(), "c18");
    }
}
