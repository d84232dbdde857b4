//! `users ls|create|disable|enable|unlock`: local accounts (admins).

use super::{prompt, Ctx};
use crate::client::{body, parse};
use crate::error::Error;
use crate::output::{self, Table};
use cairn_api::users::{NewUser, Role, User};

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let v = ctx.client.get(&["users"]).await?;
    ctx.emit(&v, || {
        let users: Vec<User> = parse(&v, "the user list")?;
        Ok(render(&users, output::now_ms()))
    })
}

pub async fn create(ctx: &Ctx, name: &str, admin: bool, password_stdin: bool) -> Result<(), Error> {
    // Ask for the password before anything goes over the wire.
    let password = prompt::get_password(password_stdin, true)?;
    let role = if admin { Role::Admin } else { Role::User };
    let new = NewUser {
        name: name.into(),
        password,
        role,
    };
    let v = ctx.client.post(&["users"], Some(&body(&new)?)).await?;
    ctx.emit(&v, || {
        let u: User = parse(&v, "the new user")?;
        Ok(format!(
            "created user {} ({})\n",
            output::clean(&u.name),
            u.role
        ))
    })
}

pub async fn set_disabled(ctx: &Ctx, name: &str, disabled: bool) -> Result<(), Error> {
    let verb = if disabled { "disable" } else { "enable" };
    let v = ctx.client.post(&["users", name, verb], None).await?;
    ctx.emit(&v, || {
        let u: User = parse(&v, "the user")?;
        Ok(format!("user {} {verb}d\n", output::clean(&u.name)))
    })
}

/// Lifts the failed-login delay or lock-out on an account.
pub async fn unlock(ctx: &Ctx, name: &str) -> Result<(), Error> {
    let v = ctx.client.post(&["users", name, "unlock"], None).await?;
    ctx.emit(&v, || {
        Ok(format!(
            "failed logins of {} forgiven; it may log in again\n",
            output::clean(name)
        ))
    })
}

/// The `users ls` table.
pub fn render(users: &[User], now_ms: u64) -> String {
    if users.is_empty() {
        return "no users; create one with `cairn users create NAME`\n".into();
    }
    let mut t = Table::new(&["NAME", "ROLE", "STATUS", "CREATED"]);
    for u in users {
        t.row(vec![
            u.name.clone(),
            u.role.to_string(),
            if u.disabled { "disabled" } else { "enabled" }.into(),
            output::ago(now_ms, u.created_ms),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn users_render_as_a_table() {
        let users: Vec<User> = serde_json::from_value(json!([
            {"name":"alice","role":"user","disabled":false,"created_ms":40_000},
            {"name":"root","role":"admin","disabled":true,"created_ms":3_700_000}
        ]))
        .unwrap();
        assert_eq!(
            render(&users, 3_760_000),
            "NAME    ROLE    STATUS     CREATED\n\
             alice   user    enabled    1h2m ago\n\
             root    admin   disabled   1m ago\n"
        );
    }
}
