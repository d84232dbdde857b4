//! `volumes ls|snapshots|restore|download|rm`: the caller's persistent volumes.
//!
//! A volume is a chain of snapshots the controller keeps; `restore` makes an older
//! snapshot (or a conflict's, or a halted one after a look) the head the next
//! launch restores, `download` writes a snapshot's files as a tar, `rm` deletes a
//! volume with every snapshot once confirmed with `--yes`.

use std::path::Path;

use cairn_api::volumes::{SnapshotStatus, VolumeView};

use super::Ctx;
use crate::client::{body, parse};
use crate::error::Error;
use crate::output::{self, Table};

fn status(s: SnapshotStatus) -> &'static str {
    match s {
        SnapshotStatus::Saved => "saved",
        SnapshotStatus::Conflict => "CONFLICT",
        SnapshotStatus::Halted => "HALTED",
    }
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let v = ctx.client.get(&["volumes"]).await?;
    ctx.emit(&v, || {
        let all: Vec<VolumeView> = parse(&v, "the volume list")?;
        if all.is_empty() {
            return Ok("no volumes yet: launching a blueprint that keeps files makes one\n".into());
        }
        let now = output::now_ms();
        let mut t = Table::new(&[
            "NAME",
            "FILES",
            "SIZE",
            "SNAPSHOTS",
            "SAVED",
            "IN USE BY",
            "NOTE",
        ]);
        for x in &all {
            let head = x.snapshots.iter().find(|s| s.head);
            t.row(vec![
                output::clean(&x.name),
                x.files.to_string(),
                output::bytes(x.bytes),
                x.snapshots.len().to_string(),
                head.map_or("-".into(), |h| output::ago(now, h.created_ms)),
                x.in_use_by.clone().unwrap_or_else(|| "-".into()),
                if x.attention > 0 {
                    format!(
                        "{} to look at (cairn volumes snapshots {})",
                        x.attention, x.name
                    )
                } else {
                    String::new()
                },
            ]);
        }
        Ok(t.render())
    })
}

pub async fn snapshots(ctx: &Ctx, name: &str) -> Result<(), Error> {
    let v = ctx.client.get(&["volumes", name]).await?;
    ctx.emit(&v, || {
        let x: VolumeView = parse(&v, "the volume")?;
        let now = output::now_ms();
        let mut t = Table::new(&["ID", "", "STATUS", "FILES", "SIZE", "SAVED", "BY", "REASON"]);
        for s in x.snapshots.iter().rev() {
            t.row(vec![
                s.id.to_string(),
                if s.head { "head".into() } else { String::new() },
                status(s.status).into(),
                s.files.to_string(),
                output::bytes(s.bytes),
                output::ago(now, s.created_ms),
                output::clean(&s.by),
                output::clean(s.reason.as_deref().unwrap_or("")),
            ]);
        }
        Ok(t.render())
    })
}

pub async fn restore(ctx: &Ctx, name: &str, snapshot: u64) -> Result<(), Error> {
    let req = body(&cairn_api::volumes::SetHead { snapshot })?;
    let v = ctx
        .client
        .post(&["volumes", name, "head"], Some(&req))
        .await?;
    ctx.emit(&v, || {
        let x: VolumeView = parse(&v, "the volume")?;
        Ok(format!(
            "{name}: snapshot {snapshot} is the head (generation {}); the next launch restores it\n",
            x.generation
        ))
    })
}

pub async fn download(ctx: &Ctx, name: &str, snapshot: u64, out: &Path) -> Result<(), Error> {
    let tmp = out.with_extension("tar.partial");
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| Error::Input(format!("{}: {e}", tmp.display())))?;
    let id = snapshot.to_string();
    let n = ctx
        .client
        .download(&["volumes", name, "snapshots", &id, "tar"], &mut f)
        .await;
    let n = match n {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    f.sync_all()
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| Error::Input(format!("{}: {e}", out.display())))?;
    output::print(&format!(
        "wrote {} ({}) : snapshot {snapshot} of {name}\n",
        out.display(),
        output::bytes(n)
    ))
}

pub async fn remove(ctx: &Ctx, name: &str, yes: bool) -> Result<(), Error> {
    if !yes {
        return Err(Error::Usage(format!(
            "deleting volume {name} deletes every snapshot of its files for good; run again with --yes to confirm"
        )));
    }
    let v = ctx.client.delete(&["volumes", name]).await?;
    ctx.emit(&v, || {
        let x: VolumeView = parse(&v, "the volume")?;
        Ok(format!(
            "deleted volume {name} ({} snapshot{})\n",
            x.snapshots.len(),
            if x.snapshots.len() == 1 { "" } else { "s" }
        ))
    })
}
