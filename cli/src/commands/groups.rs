//! `groups ls|show|create|set|add|rm|leave|code|usage`, `join CODE`, `usage`,
//! `audit`: groups and their people, join codes, usage, the audit log. What each
//! may do is the controller's to decide; refusals come back in its words.

use reqwest::Method;
use serde_json::json;

use super::Ctx;
use crate::client::{body, parse};
use crate::error::Error;
use crate::output::{self, Table};
use cairn_api::groups::{
    AuditEntry, Departure, Group, GroupInput, GroupRole, JoinCode, JoinCodeInput, JoinInput,
    MemberInput, Quota, UsageReport, UsageRow,
};

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let v = ctx.client.get(&["groups"]).await?;
    ctx.emit(&v, || {
        let groups: Vec<Group> = parse(&v, "the group list")?;
        Ok(render_list(&groups, output::now_ms()))
    })
}

pub fn render_list(groups: &[Group], now_ms: u64) -> String {
    let mut t = Table::new(&["NAME", "TITLE", "ROLE", "ENDS"]);
    for g in groups {
        t.row(vec![
            g.name.clone(),
            output::truncate(&output::clean(&g.title), 40),
            g.role.map_or_else(|| "-".into(), |r| r.to_string()),
            ends(g.expires_ms, now_ms),
        ]);
    }
    t.render()
}

fn ends(expires_ms: Option<u64>, now_ms: u64) -> String {
    match expires_ms {
        None => "-".into(),
        Some(e) if e <= now_ms => "ended".into(),
        Some(e) => format!("in {}", output::duration_ms(e - now_ms)),
    }
}

fn quota(q: &Quota) -> String {
    let mut parts = vec![];
    if let Some(n) = q.instances {
        parts.push(format!("{n} instances"));
    }
    if let Some(m) = q.memory_mib {
        parts.push(format!("{m} MiB"));
    }
    if let Some(c) = q.credits {
        parts.push(format!("{c} credits"));
    }
    if parts.is_empty() {
        "unlimited".into()
    } else {
        parts.join(", ")
    }
}

pub async fn show(ctx: &Ctx, name: &str) -> Result<(), Error> {
    let v = ctx.client.get(&["groups", name]).await?;
    ctx.emit(&v, || {
        let g: Group = parse(&v, "the group")?;
        Ok(render_group(&g, output::now_ms()))
    })
}

pub fn render_group(g: &Group, now_ms: u64) -> String {
    let mut pairs = vec![
        ("name", g.name.clone()),
        ("title", output::clean(&g.title)),
        (
            "your role",
            g.role.map_or_else(|| "-".into(), |r| r.to_string()),
        ),
        ("ends", ends(g.expires_ms, now_ms)),
        ("quota", quota(&g.quota)),
        ("per member", quota(&g.member_quota)),
        (
            "idle timeout",
            g.idle_timeout_secs
                .map_or_else(|| "-".into(), |s| output::duration_ms(s * 1000)),
        ),
    ];
    if !g.limits.images.is_empty() {
        pairs.push(("images", g.limits.images.join(", ")));
    }
    if !g.granted.is_empty() {
        pairs.push(("granted", g.granted.join(", ")));
    }
    let mut out = output::key_values(&pairs);
    if !g.members.is_empty() {
        let mut t = Table::new(&["MEMBER", "ROLE", "JOINED"]);
        for m in &g.members {
            t.row(vec![
                m.user.clone(),
                m.role.to_string(),
                output::ago(now_ms, m.joined_ms),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

pub async fn create(
    ctx: &Ctx,
    name: &str,
    owner: &str,
    title: Option<String>,
) -> Result<(), Error> {
    let input = GroupInput {
        name: Some(name.into()),
        owner: Some(owner.into()),
        title,
        ..GroupInput::default()
    };
    let v = ctx.client.post(&["groups"], Some(&body(&input)?)).await?;
    ctx.emit(&v, || {
        let g: Group = parse(&v, "the group")?;
        Ok(format!("created group {} owned by {owner}\n", g.name))
    })
}

/// `groups set NAME FIELD=VALUE...`: a PATCH of the fields given as JSON values
/// (`title="Course A" expires_ms=1767225600000 quota={"instances":30}`).
pub async fn set(ctx: &Ctx, name: &str, fields: &[String]) -> Result<(), Error> {
    let mut obj = serde_json::Map::new();
    for f in fields {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("{f:?} is not FIELD=VALUE")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| json!(v));
        obj.insert(k.to_string(), value);
    }
    // Checked here too, so a typo is named before anything is sent.
    let input: GroupInput = serde_json::from_value(serde_json::Value::Object(obj))
        .map_err(|e| Error::Usage(format!("group fields: {e}")))?;
    let v = ctx
        .client
        .json(Method::PATCH, &["groups", name], &[], Some(&body(&input)?))
        .await?;
    ctx.emit(&v, || {
        let g: Group = parse(&v, "the group")?;
        Ok(render_group(&g, output::now_ms()))
    })
}

pub async fn add(ctx: &Ctx, name: &str, user: &str, role: GroupRole) -> Result<(), Error> {
    let v = ctx
        .client
        .json(
            Method::PUT,
            &["groups", name, "members", user],
            &[],
            Some(&body(&MemberInput { role })?),
        )
        .await?;
    ctx.emit(&v, || Ok(format!("{user} is a {role} of {name}\n")))
}

pub async fn remove(ctx: &Ctx, name: &str, user: &str) -> Result<(), Error> {
    let v = ctx
        .client
        .delete(&["groups", name, "members", user])
        .await?;
    ctx.emit(&v, || {
        let d: Departure = parse(&v, "the departure")?;
        Ok(render_departure(&d))
    })
}

pub fn render_departure(d: &Departure) -> String {
    let mut s = format!("{} is no longer in {}\n", d.user, d.group);
    if !d.stopped.is_empty() {
        s.push_str(&format!(
            "stopped {} instance(s) ({}): {}\n",
            d.stopped.len(),
            d.reason,
            d.stopped.join(", ")
        ));
    }
    s
}

pub async fn code(
    ctx: &Ctx,
    name: &str,
    new: bool,
    valid: Option<std::time::Duration>,
    max_uses: Option<u32>,
) -> Result<(), Error> {
    let v = if new {
        let input = JoinCodeInput {
            valid_secs: valid.map(|d| d.as_secs().max(1)),
            max_uses,
        };
        ctx.client
            .post(&["groups", name, "code"], Some(&body(&input)?))
            .await?
    } else {
        ctx.client.get(&["groups", name, "code"]).await?
    };
    ctx.emit(&v, || {
        let c: JoinCode = parse(&v, "the join code")?;
        let now = output::now_ms();
        let uses = match c.max_uses {
            Some(m) => format!("{} of {m} uses", c.uses),
            None => format!("{} uses", c.uses),
        };
        Ok(format!(
            "{}  (group {}, expires in {}, {uses})\nstudents join with: cairn join {}\n",
            c.code,
            c.group,
            output::duration_ms(c.expires_ms.saturating_sub(now)),
            c.code
        ))
    })
}

pub async fn join(ctx: &Ctx, code: &str) -> Result<(), Error> {
    let input = JoinInput { code: code.into() };
    let v = ctx.client.post(&["join"], Some(&body(&input)?)).await?;
    ctx.emit(&v, || {
        let g: Group = parse(&v, "the group")?;
        Ok(format!(
            "joined {} ({}); `cairn blueprints` lists what you can launch\n",
            g.name,
            output::clean(&g.title)
        ))
    })
}

fn usage_table(rows: &[UsageRow]) -> Table {
    let mut t = Table::new(&["GROUP", "USER", "RUNNING", "MEMORY", "CREDITS", "LAUNCHES"]);
    for r in rows {
        t.row(vec![
            r.group.clone(),
            r.user.clone(),
            r.instances.to_string(),
            format!("{} MiB", r.memory_mib),
            format!("{:.2}", r.credits),
            r.launches.to_string(),
        ]);
    }
    t
}

/// `usage`: the caller's; `usage --group G`: a group's (managers); `usage --csv`:
/// everyone's (admins).
pub async fn usage(ctx: &Ctx, group: Option<&str>, csv: bool) -> Result<(), Error> {
    if csv {
        let b = ctx.client.bytes(&["usage.csv"], &[]).await?;
        return output::print_bytes(&b);
    }
    match group {
        Some(g) => {
            let v = ctx.client.get(&["groups", g, "usage"]).await?;
            ctx.emit(&v, || {
                let r: UsageReport = parse(&v, "the usage report")?;
                let mut rows = r.rows.clone();
                rows.push(r.total.clone());
                Ok(format!(
                    "{}quota: {}; per member: {}\n",
                    usage_table(&rows).render(),
                    quota(&r.quota),
                    quota(&r.member_quota)
                ))
            })
        }
        None => {
            let v = ctx.client.get(&["usage"]).await?;
            ctx.emit(&v, || {
                let rows: Vec<UsageRow> = parse(&v, "the usage")?;
                if rows.is_empty() {
                    return Ok("nothing used yet\n".into());
                }
                Ok(usage_table(&rows).render())
            })
        }
    }
}

pub async fn audit(ctx: &Ctx, limit: usize) -> Result<(), Error> {
    let v = ctx
        .client
        .json(
            Method::GET,
            &["audit"],
            &[("limit", limit.to_string())],
            None,
        )
        .await?;
    ctx.emit(&v, || {
        let entries: Vec<AuditEntry> = parse(&v, "the audit log")?;
        let now = output::now_ms();
        let mut t = Table::new(&["WHEN", "WHO", "ACTION", "TARGET", "FROM", "DETAIL"]);
        for e in &entries {
            t.row(vec![
                output::ago(now, e.at_ms),
                output::clean(&e.actor),
                e.action.clone(),
                output::clean(&e.target),
                e.from.clone().unwrap_or_else(|| "-".into()),
                output::truncate(&output::clean(&e.detail), 60),
            ]);
        }
        Ok(t.render())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_departure_names_what_it_stopped() {
        let d = Departure {
            group: "course-a".into(),
            user: "sam".into(),
            stopped: vec!["i-0123456789abcdef".into()],
            reason: "sam was removed from group course-a by tina".into(),
        };
        assert_eq!(
            render_departure(&d),
            "sam is no longer in course-a\nstopped 1 instance(s) (sam was removed from group course-a by tina): i-0123456789abcdef\n"
        );
    }

    #[test]
    fn quotas_read_as_words() {
        assert_eq!(quota(&Quota::default()), "unlimited");
        let q = Quota {
            instances: Some(30),
            memory_mib: None,
            credits: Some(2.5),
        };
        assert_eq!(quota(&q), "30 instances, 2.5 credits");
    }
}
