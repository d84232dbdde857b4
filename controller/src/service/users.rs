//! Accounts (admins): list, create, disable, enable. An admin may not disable
//! their own account: the last admin could lock everyone out.

use super::{now, Caller, Service, ServiceError, ServiceResult};
use cairn_api::users::User;

use crate::users::{AccountsError, Role};

impl From<AccountsError> for ServiceError {
    fn from(e: AccountsError) -> Self {
        match e {
            AccountsError::BadName | AccountsError::BadPassword => {
                ServiceError::invalid(e.to_string())
            }
            AccountsError::Exists(_) => ServiceError::conflict("already_exists", e.to_string()),
            AccountsError::NotLinked(_) => {
                ServiceError::conflict("account_not_linked", e.to_string())
            }
            AccountsError::NotFound(_) => ServiceError::not_found(e.to_string()),
            AccountsError::Hash(_) | AccountsError::Store(_) => ServiceError::internal(e),
        }
    }
}

impl Service {
    pub fn list_users(&self, caller: &Caller) -> ServiceResult<Vec<User>> {
        caller.admin()?;
        Ok(self.app.accounts.list()?.iter().map(User::from).collect())
    }

    pub async fn create_user(
        &self,
        caller: &Caller,
        name: &str,
        password: &str,
        role: Role,
    ) -> ServiceResult<User> {
        let by = caller.admin()?;
        let user = self
            .app
            .accounts
            .create(name, password, role, now())
            .await?;
        tracing::info!(user = %user.name, role = ?user.role, by = %by.name(), "user created");
        self.audit(caller, "user.create", &user.name, user.role.to_string());
        Ok(User::from(&user))
    }

    /// Disables or enables an account. A disabled account's tokens stop working at
    /// once (every request checks the account).
    pub async fn set_user_disabled(
        &self,
        caller: &Caller,
        name: &str,
        disabled: bool,
    ) -> ServiceResult<User> {
        let by = caller.admin()?;
        if disabled && by.user.as_deref() == Some(name) {
            return Err(ServiceError::conflict(
                "self_disable",
                "you cannot disable your own account; ask another admin",
            ));
        }
        let user = self.app.accounts.set_disabled(name, disabled).await?;
        tracing::info!(user = %name, disabled, by = %by.name(), "user disabled flag set");
        self.audit(
            caller,
            if disabled {
                "user.disable"
            } else {
                "user.enable"
            },
            name,
            String::new(),
        );
        Ok(User::from(&user))
    }
}
