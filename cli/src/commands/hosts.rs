//! `hosts`: the hosts of the controller, with their state, standing and capacity, and
//! the pool requests drain, undrain and remove (admins).

use super::Ctx;
use crate::client::{body, parse};
use crate::error::Error;
use crate::output::{self, Table};
use cairn_api::hosts::{Drain, HostView as Host};

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let v = ctx.client.get(&["hosts"]).await?;
    ctx.emit(&v, || {
        let hosts: Vec<Host> = parse(&v, "the host list")?;
        Ok(render(&hosts, output::now_ms()))
    })
}

/// `hosts drain ID [--deadline D]`.
pub async fn drain(
    ctx: &Ctx,
    id: &str,
    deadline: Option<std::time::Duration>,
) -> Result<(), Error> {
    let req = body(&Drain {
        deadline_secs: deadline.map(|d| d.as_secs()),
    })?;
    let v = ctx.client.post(&["hosts", id, "drain"], Some(&req)).await?;
    emit_standing(ctx, &v)
}

/// Prints `host ID is STANDING` (or the JSON) after a pool request.
fn emit_standing(ctx: &Ctx, v: &serde_json::Value) -> Result<(), Error> {
    ctx.emit(v, || {
        let h: Host = parse(v, "the host")?;
        Ok(format!("host {} is {}\n", h.id, h.pool.standing))
    })
}

/// `hosts undrain ID`.
pub async fn pool(ctx: &Ctx, id: &str, verb: &str) -> Result<(), Error> {
    let v = ctx.client.post(&["hosts", id, verb], None).await?;
    emit_standing(ctx, &v)
}

/// `hosts remove ID`.
pub async fn remove(ctx: &Ctx, id: &str) -> Result<(), Error> {
    let v = ctx.client.delete(&["hosts", id]).await?;
    ctx.emit(&v, || {
        let h: Host = parse(&v, "the host")?;
        Ok(format!("host {} removed\n", h.id))
    })
}

/// The `hosts` table. MEM is the total and, in brackets, what is available.
pub fn render(hosts: &[Host], now_ms: u64) -> String {
    if hosts.is_empty() {
        return "no hosts; enrol one with `cairn-agent join` (see `cairn-controller token create`)\n"
            .into();
    }
    let mut t = Table::new(&[
        "ID",
        "HOSTNAME",
        "STATE",
        "STANDING",
        "CPUS",
        "MEM",
        "LAST SEEN",
        "PULLS",
        "DATASETS",
        "LABELS",
    ]);
    for h in hosts {
        let (cpus, mem) = match &h.capacity {
            Some(c) => (
                c.cpus.to_string(),
                format!(
                    "{} ({} free)",
                    output::bytes(c.memory_total_bytes),
                    output::bytes(c.memory_available_bytes)
                ),
            ),
            None => ("-".into(), "-".into()),
        };
        let labels = if h.labels.is_empty() {
            "-".to_string()
        } else {
            h.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        t.row(vec![
            h.id.to_string(),
            h.hostname.clone(),
            h.state.to_string(),
            h.pool.standing.to_string(),
            cpus,
            mem,
            output::ago(now_ms, h.last_seen_ms),
            pulls(h),
            // Dataset versions held ready; which ones is in `--json`.
            match h.datasets.len() {
                0 => "-".into(),
                n => n.to_string(),
            },
            labels,
        ]);
    }
    t.render()
}

/// `-`, `2 pulling`, `1 pulling, 1 failed`: details are on the Hosts page and in
/// `--json`.
fn pulls(h: &Host) -> String {
    let failed = h.failed_pulls();
    let active = h.pulls.len() - failed;
    match (active, failed) {
        (0, 0) => "-".into(),
        (a, 0) => format!("{a} pulling"),
        (0, f) => format!("{f} failed"),
        (a, f) => format!("{a} pulling, {f} failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosts_render_with_human_units_and_ages() {
        let pull = |reference: &str, phase: serde_json::Value| {
            json!({"reference":reference,"phase":phase,"attempt":1,"layers_done":0,"layers_total":2,
                   "bytes_done":0,"bytes_total":0,"prepull":true})
        };
        let hosts: Vec<Host> = serde_json::from_value(json!([
            {"id":"h-0123456789abcdef","hostname":"node1","state":"active","state_since_ms":1,
             "state_reason":"hello","last_seen_ms":99_000,"connected":true,"enrolled_ms":1,
             "labels":{"gpu":"true","zone":"a"},"facts":null,
             "capacity":{"cpus":2,"memory_total_bytes":25_769_803_776u64,"memory_available_bytes":8_270_000_000u64,
                         "load_average":[0.1,0.2,0.3],"docker_disk":null,"state_disk":null},
             "runtime":null,"cert_not_after_unix":0,"remote_addr":"127.0.0.1:5000","transitions":[],
             "pool":{"standing":{"state":"quarantined","until_ms":5},"consecutive_failures":3,
                     "quarantines":1,"last_failure":"disk full"},
             "pool_history":[],
             "pulls":[pull("r/a@sha256:1", json!("Pulling")),
                      pull("r/b@sha256:2", json!({"Failed":{"error":"unreachable"}}))],
             "datasets":["01".repeat(32), "02".repeat(32)]},
            {"id":"h-fedcba9876543210","hostname":"node2","state":"joining","state_since_ms":0,
             "state_reason":null,"last_seen_ms":0,"connected":false,"enrolled_ms":0,"labels":{},
             "facts":null,"capacity":null,"runtime":null,"cert_not_after_unix":0,"remote_addr":null,
             "transitions":[],"pool":{"standing":{"state":"open"}},"pool_history":[],"pulls":[]}
        ]))
        .unwrap();
        assert_eq!(
            render(&hosts, 100_000),
            "ID                   HOSTNAME   STATE     STANDING      CPUS   MEM                     LAST SEEN   PULLS                 DATASETS   LABELS\n\
             h-0123456789abcdef   node1      active    quarantined   2      24 GiB (7.7 GiB free)   1s ago      1 pulling, 1 failed   2          gpu=true,zone=a\n\
             h-fedcba9876543210   node2      joining   open          -      -                       never       -                     -          -\n"
        );
    }
}
