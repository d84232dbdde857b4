//! Who is asking: an anonymous caller or an authenticated [`Principal`]. Every
//! operation takes a [`Caller`] and states what it needs with [`Caller::user`] or
//! [`Caller::admin`]; nothing else decides roles.

use super::error::{ServiceError, ServiceResult};
use crate::users::Principal;

#[derive(Debug, Clone, Default)]
pub struct Caller {
    principal: Option<Principal>,
    /// The client's address, for the audit log.
    addr: Option<std::net::IpAddr>,
}

impl Caller {
    /// Nobody logged in.
    pub fn anonymous() -> Self {
        Caller::default()
    }

    /// The local operator: whoever runs the controller's process (development mode,
    /// the offline commands). Holds the bootstrap admin's rights.
    pub fn operator() -> Self {
        Caller::of(Principal {
            user: None,
            role: crate::users::Role::Admin,
            token_id: None,
        })
    }

    /// An authenticated principal (doors get one from [`super::Service::authenticate`]).
    pub fn of(p: Principal) -> Self {
        Caller {
            principal: Some(p),
            addr: None,
        }
    }

    /// The same caller, known to come from `addr`.
    pub fn from_addr(mut self, addr: Option<std::net::IpAddr>) -> Self {
        self.addr = addr;
        self
    }

    pub fn addr(&self) -> Option<std::net::IpAddr> {
        self.addr
    }

    /// The name the audit log records: the account, `admin` for the bootstrap
    /// token, `-` for nobody.
    pub fn actor(&self) -> &str {
        self.principal.as_ref().map_or("-", Principal::name)
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    pub fn is_admin(&self) -> bool {
        self.principal.as_ref().is_some_and(Principal::is_admin)
    }

    /// Any logged-in user.
    pub fn user(&self) -> ServiceResult<&Principal> {
        self.principal.as_ref().ok_or_else(|| {
            ServiceError::unauthenticated("missing bearer token (Authorization: Bearer <token>)")
        })
    }

    /// An admin; a user gets 403, nobody 401.
    pub fn admin(&self) -> ServiceResult<&Principal> {
        let p = self.user()?;
        if p.is_admin() {
            Ok(p)
        } else {
            Err(ServiceError::forbidden("this needs an admin account"))
        }
    }

    /// Whether the caller may see and act on what `owner` owns.
    pub fn may_see(&self, owner: &str) -> bool {
        self.principal
            .as_ref()
            .is_some_and(|p| p.is_admin() || p.name() == owner)
    }
}
