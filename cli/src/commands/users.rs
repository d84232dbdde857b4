//! `users ls|create|disable|enable|unlock|pending|approve|reject|expire|delete`:
//! accounts; and `register`, sign-up.

use super::{prompt, Ctx};
use crate::client::{body, parse};
use crate::error::Error;
use crate::output::{self, Table};
use cairn_api::users::{Expiry, NewUser, Registered, Registration, Role, User};

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

/// `cairn register`: sign-up; says whether the account waits for approval.
pub async fn register(
    ctx: &Ctx,
    name: &str,
    email: &str,
    code: Option<String>,
    password_stdin: bool,
) -> Result<(), Error> {
    let password = prompt::get_password(password_stdin, true)?;
    let r = Registration {
        name: name.into(),
        email: email.into(),
        password,
        code,
    };
    let v = ctx.client.register(&body(&r)?).await?;
    ctx.emit(&v, || {
        let r: Registered = parse(&v, "the registration")?;
        Ok(format!(
            "registered {}: {}\n",
            output::clean(&r.user.name),
            output::clean(&r.message)
        ))
    })
}

/// `users pending`: sign-ups waiting for the caller.
pub async fn pending(ctx: &Ctx) -> Result<(), Error> {
    let v = ctx.client.get(&["registrations"]).await?;
    ctx.emit(&v, || {
        let users: Vec<User> = parse(&v, "the registrations")?;
        if users.is_empty() {
            return Ok("no sign-up waits for you\n".into());
        }
        let now = output::now_ms();
        let mut t = Table::new(&["NAME", "E-MAIL", "GROUP", "ASKED"]);
        for u in &users {
            t.row(vec![
                u.name.clone(),
                u.email.clone().unwrap_or_else(|| "-".into()),
                u.pending_group.clone().unwrap_or_else(|| "-".into()),
                output::ago(now, u.created_ms),
            ]);
        }
        Ok(t.render())
    })
}

/// `users approve|reject NAME`.
pub async fn decide(ctx: &Ctx, name: &str, verb: &str) -> Result<(), Error> {
    let v = ctx.client.post(&["users", name, verb], None).await?;
    ctx.emit(&v, || {
        Ok(format!(
            "sign-up of {} {}\n",
            output::clean(name),
            if verb == "approve" {
                "approved"
            } else {
                "rejected; the account is gone"
            }
        ))
    })
}

/// `users expire NAME --in D|--never`.
pub async fn expire(
    ctx: &Ctx,
    name: &str,
    after: Option<std::time::Duration>,
) -> Result<(), Error> {
    let expires_ms = after.map(|d| output::now_ms().saturating_add(d.as_millis() as u64));
    let v = ctx
        .client
        .put(
            &["users", name, "expiry"],
            Some(&body(&Expiry { expires_ms })?),
        )
        .await?;
    ctx.emit(&v, || {
        let u: User = parse(&v, "the user")?;
        Ok(match u.expires_ms {
            Some(e) => format!(
                "{} stops working in {}\n",
                output::clean(&u.name),
                output::duration_ms(e.saturating_sub(output::now_ms()))
            ),
            None => format!("{} never expires\n", output::clean(&u.name)),
        })
    })
}

/// `users delete NAME --yes` (or `--cancel`).
pub async fn delete(ctx: &Ctx, name: &str, cancel: bool) -> Result<(), Error> {
    let v = if cancel {
        ctx.client.delete(&["users", name, "deletion"]).await?
    } else {
        ctx.client.post(&["users", name, "deletion"], None).await?
    };
    ctx.emit(&v, || {
        let u: User = parse(&v, "the user")?;
        Ok(match u.delete_after_ms {
            Some(d) => format!(
                "{} and its files will be deleted in {}; `cairn users delete {} --cancel` keeps them\n",
                output::clean(&u.name),
                output::duration_ms(d.saturating_sub(output::now_ms())),
                output::clean(&u.name)
            ),
            None => format!("{} will not be deleted\n", output::clean(&u.name)),
        })
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
            status(u, now_ms).into(),
            output::ago(now_ms, u.created_ms),
        ]);
    }
    t.render()
}

fn status(u: &User, now_ms: u64) -> &'static str {
    if u.disabled {
        "disabled"
    } else if u.pending {
        "pending"
    } else if u.expires_ms.is_some_and(|e| e <= now_ms) {
        "expired"
    } else if u.delete_after_ms.is_some() {
        "deleting"
    } else {
        "enabled"
    }
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
