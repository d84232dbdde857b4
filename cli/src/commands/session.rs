//! `login`, `logout` and `whoami`.
//!
//! `login` trades a user name and password for an API token and saves the URL and
//! the token in the config file; `logout` revokes the token and removes it from the
//! file again.

use serde_json::Value;

use super::{prompt, Ctx};
use crate::client::parse;
use crate::config::{self, ConfigFile, Source};
use crate::error::Error;
use crate::output;
use cairn_api::session::LoginResponse;
use cairn_api::users::Principal;

/// What the token is recorded as on the controller.
pub fn token_description() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host = if host.trim().is_empty() {
        "unknown host".to_string()
    } else {
        host
    };
    format!("cairn cli on {host}")
}

pub async fn login(ctx: &Ctx, user: Option<String>, password_stdin: bool) -> Result<(), Error> {
    let user = match user.filter(|u| !u.trim().is_empty()) {
        Some(u) => u,
        None if !password_stdin && prompt::interactive() => {
            let u = prompt::line("User: ")?;
            if u.is_empty() {
                return Err(Error::Input("no user name given".into()));
            }
            u
        }
        None => {
            return Err(Error::Usage(
                "no user name: pass --user NAME (it cannot be asked for without a terminal, or with --password-stdin)".into(),
            ))
        }
    };
    let password = prompt::get_password(password_stdin, false)?;
    let answer = ctx
        .client
        .login(&user, &password, &token_description())
        .await?;
    let resp: LoginResponse = parse(&answer, "login")?;

    let saved = ConfigFile {
        url: Some(ctx.client.url().to_string()),
        token: Some(resp.token.clone()),
    };
    config::save(&ctx.config_path, &saved)?;
    if ctx.settings.token_source == Some(Source::Env) {
        output::note("note: CAIRN_TOKEN is set and is used instead of the saved token");
    }

    if ctx.json {
        // The token is a secret: it went into the config file, not to stdout.
        let mut shown = answer.clone();
        if let Value::Object(m) = &mut shown {
            m.remove("token");
            m.insert(
                "config".into(),
                Value::String(ctx.config_path.display().to_string()),
            );
        }
        return output::print(&output::json(&shown));
    }
    let expires = if resp.expires_ms > 0 {
        format!(
            "; it expires in {}",
            output::duration_ms(resp.expires_ms.saturating_sub(output::now_ms()))
        )
    } else {
        String::new()
    };
    output::print(&format!(
        "logged in to {} as {} ({})\ntoken saved in {}{expires}\n",
        ctx.client.url(),
        output::clean(&resp.user),
        resp.role,
        ctx.config_path.display(),
    ))
}

pub async fn logout(ctx: &Ctx) -> Result<(), Error> {
    let Some(token) = ctx.client.token().map(str::to_string) else {
        // Nothing to revoke; still make sure no stale token for this URL stays behind.
        return Err(Error::NotLoggedIn {
            url: ctx.client.url().to_string(),
            hint: String::new(),
        });
    };
    let revoked = match ctx.client.post(&["logout"], None).await {
        Ok(_) => true,
        // Already invalid (expired, revoked, account disabled): forget it all the same.
        Err(Error::Api(e)) if e.status == 401 => false,
        Err(e) => return Err(e),
    };
    let removed = ctx.config.token.as_deref() == Some(token.as_str());
    if removed {
        config::save(
            &ctx.config_path,
            &ConfigFile {
                token: None,
                ..ctx.config.clone()
            },
        )?;
    }
    if ctx.json {
        return output::print(&output::json(&serde_json::json!({
            "url": ctx.client.url(),
            "revoked": revoked,
            "removed_from": removed.then(|| ctx.config_path.display().to_string()),
        })));
    }
    let mut msg = if revoked {
        format!("logged out of {}", ctx.client.url())
    } else {
        format!(
            "the token was no longer valid at {}; nothing to revoke",
            ctx.client.url()
        )
    };
    if removed {
        msg.push_str(&format!(
            "\ntoken removed from {}",
            ctx.config_path.display()
        ));
    }
    msg.push('\n');
    output::print(&msg)
}

pub async fn whoami(ctx: &Ctx) -> Result<(), Error> {
    let v = ctx.client.get(&["me"]).await?;
    ctx.emit(&v, || {
        let p: Principal = parse(&v, "whoami")?;
        Ok(render_whoami(&p, ctx.client.url()))
    })
}

/// The name the saved token belongs to (for `groups leave`).
pub async fn whoami_name(ctx: &Ctx) -> Result<String, Error> {
    let v = ctx.client.get(&["me"]).await?;
    let p: Principal = parse(&v, "whoami")?;
    Ok(p.name().to_string())
}

/// `alice (user) at URL`, or the bootstrap admin token's stand-in.
pub fn render_whoami(p: &Principal, url: &str) -> String {
    match &p.user {
        Some(u) => format!("{} ({}) at {url}\n", output::clean(u), p.role),
        None => format!(
            "the controller's bootstrap admin token ({}) at {url}\n",
            p.role
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::users::Role;

    #[test]
    fn whoami_names_the_user_or_the_bootstrap_token() {
        let p = Principal {
            user: Some("alice".into()),
            role: Role::User,
            token_id: Some("t".into()),
        };
        assert_eq!(
            render_whoami(&p, "http://h:1"),
            "alice (user) at http://h:1\n"
        );
        let p = Principal {
            user: None,
            role: Role::Admin,
            token_id: None,
        };
        assert_eq!(
            render_whoami(&p, "http://h:1"),
            "the controller's bootstrap admin token (admin) at http://h:1\n"
        );
    }

    #[test]
    fn the_token_description_names_this_host() {
        assert!(token_description().starts_with("cairn cli on "));
    }
}
