//! Local user accounts.
//!
//! Passwords are hashed with argon2id (the crate's default parameters) and a random
//! salt; hashing runs on the blocking pool because it is meant to be slow.

use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, Tree};

pub use cairn_api::users::Role;

/// A stored account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub password_hash: String,
    pub disabled: bool,
    pub created_ms: u64,
    /// For an account made by a single sign-on login: the provider's issuer and
    /// subject (`{issuer}#{sub}`), the one identity that may log in as it. An
    /// account without it is local and no provider may take it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The address a self-registered user gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Set while a self-registered account waits for approval: it cannot log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingApproval>,
    /// When the account stops working (a course's guest, a visitor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Deletion was asked for: at this time the account and its files go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after_ms: Option<u64>,
}

/// A registration waiting for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    pub requested_ms: u64,
    /// The group whose join code the registrant gave: its managers may approve,
    /// and approval makes the user its member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Where an account stands at a moment: only an active one may log in or use
/// its tokens. Pure, so every door asks the same question the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Active,
    Disabled,
    Pending,
    Expired,
}

impl User {
    pub fn standing(&self, now_ms: u64) -> Standing {
        if self.disabled {
            Standing::Disabled
        } else if self.pending.is_some() {
            Standing::Pending
        } else if self.expires_ms.is_some_and(|e| now_ms >= e) {
            Standing::Expired
        } else {
            Standing::Active
        }
    }

    /// Whether its deletion is due at `now`.
    pub fn deletion_due(&self, now_ms: u64) -> bool {
        self.delete_after_ms.is_some_and(|t| now_ms >= t)
    }
}

/// The account as the API shows it: everything but the hash.
impl From<&User> for cairn_api::users::User {
    fn from(u: &User) -> Self {
        cairn_api::users::User {
            name: u.name.clone(),
            role: u.role,
            disabled: u.disabled,
            created_ms: u.created_ms,
            email: u.email.clone(),
            pending: u.pending.is_some(),
            pending_group: u.pending.as_ref().and_then(|p| p.group.clone()),
            expires_ms: u.expires_ms,
            delete_after_ms: u.delete_after_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error(
        "user names are 1-32 characters of a-z, 0-9, '.', '_' and '-', starting with a letter"
    )]
    BadName,
    #[error("passwords are 8-1024 characters")]
    BadPassword,
    #[error("a user named {0:?} already exists")]
    Exists(String),
    #[error("no user named {0:?}")]
    NotFound(String),
    #[error("an account named {0:?} exists here already and is not the one this sign-in made; ask an admin")]
    NotLinked(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn valid_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
}

/// Password hashes computed at once: one per core, less one so the runtime's
/// workers keep a core (at least one). Argon2 is built to take a core and 19 MiB
/// for tens of milliseconds; a class of 200 logging in together had 200 of them
/// running, which starved launches and everything else of CPU for seconds and took
/// gigabytes. Queued here, each login waits its turn instead.
fn hashing() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(cores.saturating_sub(1).max(1))
    })
}

async fn hash(password: String) -> Result<String, AccountsError> {
    // The semaphore is never closed, so acquiring only waits.
    let _turn = hashing().acquire().await;
    tokio::task::spawn_blocking(move || {
        let salt_bytes: [u8; 16] = rand::random();
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|e| AccountsError::Hash(e.to_string()))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AccountsError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| AccountsError::Hash(e.to_string()))?
}

/// Checks a password against a stored hash on the blocking pool.
async fn verify(password: String, stored: String) -> bool {
    let _turn = hashing().acquire().await;
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// The accounts.
#[derive(Debug)]
pub struct Accounts {
    store: Store,
    write: Mutex<()>,
}

impl Accounts {
    pub fn new(store: Store) -> Self {
        Accounts {
            store,
            write: Mutex::new(()),
        }
    }

    pub async fn create(
        &self,
        name: &str,
        password: &str,
        role: Role,
        now_ms: u64,
    ) -> Result<User, AccountsError> {
        self.create_with(name, password, role, now_ms, |_| {}).await
    }

    /// Creates an account that `adjust` completes (a registration's e-mail and
    /// approval state) before it is stored.
    pub async fn create_with(
        &self,
        name: &str,
        password: &str,
        role: Role,
        now_ms: u64,
        adjust: impl FnOnce(&mut User),
    ) -> Result<User, AccountsError> {
        if !valid_user_name(name) {
            return Err(AccountsError::BadName);
        }
        if password.chars().count() < 8 || password.len() > 1024 {
            return Err(AccountsError::BadPassword);
        }
        let password_hash = hash(password.to_string()).await?;
        let user = User {
            name: name.to_string(),
            role,
            password_hash,
            disabled: false,
            created_ms: now_ms,
            external_id: None,
            email: None,
            pending: None,
            expires_ms: None,
            delete_after_ms: None,
        };
        let mut user = user;
        adjust(&mut user);
        {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            if self.store.get::<User>(Tree::Users, name)?.is_some() {
                return Err(AccountsError::Exists(name.to_string()));
            }
            self.store.put(Tree::Users, name, &user)?;
        }
        self.store.flush().await?;
        Ok(user)
    }

    /// The account a single sign-on identity logs in as: `name`, made now (with
    /// no password) if it does not exist, refused if it exists for anyone else
    /// (a local account, or another identity's).
    pub async fn external(
        &self,
        name: &str,
        external_id: &str,
        now_ms: u64,
    ) -> Result<(User, bool), AccountsError> {
        if !valid_user_name(name) {
            return Err(AccountsError::BadName);
        }
        let made = {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(u) = self.store.get::<User>(Tree::Users, name)? {
                return if u.external_id.as_deref() == Some(external_id) {
                    Ok((u, false))
                } else {
                    Err(AccountsError::NotLinked(name.to_string()))
                };
            }
            let user = User {
                name: name.to_string(),
                role: Role::User,
                password_hash: String::new(),
                disabled: false,
                created_ms: now_ms,
                external_id: Some(external_id.to_string()),
                email: None,
                pending: None,
                expires_ms: None,
                delete_after_ms: None,
            };
            self.store.put(Tree::Users, name, &user)?;
            user
        };
        self.store.flush().await?;
        Ok((made, true))
    }

    pub fn get(&self, name: &str) -> Result<Option<User>, StoreError> {
        if !valid_user_name(name) {
            return Ok(None);
        }
        self.store.get(Tree::Users, name)
    }

    /// Whether `name` is an admin account (a store error reads as no: the caller
    /// then applies the rules for users, which is the safe side).
    pub fn is_admin(&self, name: &str) -> bool {
        self.get(name)
            .ok()
            .flatten()
            .is_some_and(|u| u.role == Role::Admin)
    }

    pub fn list(&self) -> Result<Vec<User>, StoreError> {
        let mut v: Vec<User> = self.store.all(Tree::Users)?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<User, AccountsError> {
        self.modify(name, |u| u.disabled = disabled).await
    }

    /// Changes an account with `f`, durably.
    pub async fn modify(
        &self,
        name: &str,
        f: impl FnOnce(&mut User),
    ) -> Result<User, AccountsError> {
        let user = {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let mut u = self
                .get(name)?
                .ok_or_else(|| AccountsError::NotFound(name.to_string()))?;
            f(&mut u);
            self.store.put(Tree::Users, name, &u)?;
            u
        };
        self.store.flush().await?;
        Ok(user)
    }

    /// Removes an account record, durably.
    pub async fn remove(&self, name: &str) -> Result<(), AccountsError> {
        {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            if self.get(name)?.is_none() {
                return Err(AccountsError::NotFound(name.to_string()));
            }
            self.store.remove(Tree::Users, name)?;
        }
        self.store.flush().await?;
        Ok(())
    }

    /// The user, if `password` is theirs and the account is enabled. Every failure looks
    /// the same to the caller, so a login form cannot be used to find account names.
    pub async fn authenticate(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<User>, StoreError> {
        let Some(user) = self.get(name)? else {
            // Spend the time a real check would, so response times do not reveal
            // which names exist.
            let _ = hash(password.to_string()).await;
            return Ok(None);
        };
        let ok = verify(password.to_string(), user.password_hash.clone()).await;
        Ok((ok && !user.disabled).then_some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_are_hashed_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Accounts::new(Store::open(tmp.path()).unwrap());
        let u = a
            .create("alice", "correct horse", Role::User, 1)
            .await
            .unwrap();
        assert!(u.password_hash.starts_with("$argon2id$"));
        assert!(!u.password_hash.contains("correct horse"));
        assert!(a
            .authenticate("alice", "correct horse")
            .await
            .unwrap()
            .is_some());
        assert!(a
            .authenticate("alice", "wrong horse!")
            .await
            .unwrap()
            .is_none());
        assert!(a
            .authenticate("bob", "correct horse")
            .await
            .unwrap()
            .is_none());
        a.set_disabled("alice", true).await.unwrap();
        assert!(a
            .authenticate("alice", "correct horse")
            .await
            .unwrap()
            .is_none());
        assert!(matches!(
            a.create("alice", "another pass", Role::Admin, 2).await,
            Err(AccountsError::Exists(_))
        ));
        assert!(matches!(
            a.create("Alice", "another pass", Role::User, 2).await,
            Err(AccountsError::BadName)
        ));
        assert!(matches!(
            a.create("carol", "short", Role::User, 2).await,
            Err(AccountsError::BadPassword)
        ));
        // The API's view of an account has no place for the hash.
        let shown =
            serde_json::to_value(cairn_api::users::User::from(&a.list().unwrap()[0])).unwrap();
        assert!(shown.get("password_hash").is_none(), "{shown}");
    }
}
