//! Users' volumes: taking a volume's lease at launch, listing, restoring a snapshot
//! as head, downloading one, deleting a volume.
//!
//! Rules: a user acts on their own volumes; an admin on anyone's (naming the
//! owner). Making a snapshot the head and deleting a volume are refused while an
//! instance writes it (409 `volume_in_use`); a save or a head past the owner's
//! byte quota is refused with the numbers (409 `over_quota`).

use cairn_api::error::FieldError;
use cairn_api::volumes::{SnapshotView, VolumeView};
use cairn_shared::ids::InstanceId;
use cairn_shared::workload::VolumeMount;

use super::{now, Caller, Kind, Service, ServiceError, ServiceResult};
use crate::blueprints::spec::BlueprintVolume;
use crate::instances::state::InstanceVolume;
use crate::volumes::{SnapshotStatus, VolumeRecord, Volumes, VolumesError};

impl From<VolumesError> for ServiceError {
    fn from(e: VolumesError) -> Self {
        use VolumesError as E;
        match e {
            E::InvalidName(_) => {
                ServiceError::invalid(e.to_string()).with_fields(vec![FieldError {
                    field: "volume".into(),
                    message: crate::datasets::NAME_RULE.into(),
                }])
            }
            E::NotFound(_) | E::NoSnapshot { .. } => ServiceError::not_found(e.to_string()),
            E::InUse { .. } => ServiceError::conflict("volume_in_use", e.to_string()),
            E::OverQuota { .. } => ServiceError::conflict("over_quota", e.to_string()),
            E::TooManySide(_) => ServiceError::conflict("limit_reached", e.to_string()),
            E::InvalidManifest(_) => {
                ServiceError::new(Kind::Invalid, "invalid_manifest", e.to_string())
            }
            E::ChunksMissing { .. } => ServiceError::conflict("chunks_missing", e.to_string()),
            E::Chunks(c) => c.into(),
            E::ManifestLost(_) | E::Store(_) => ServiceError::internal(e),
        }
    }
}

fn status(s: SnapshotStatus) -> cairn_api::volumes::SnapshotStatus {
    use cairn_api::volumes::SnapshotStatus as A;
    match s {
        SnapshotStatus::Saved => A::Saved,
        SnapshotStatus::Conflict => A::Conflict,
        SnapshotStatus::Halted => A::Halted,
    }
}

/// A volume as the API shows it.
pub fn volume_view(r: VolumeRecord) -> VolumeView {
    let head = r.head;
    let (bytes, files) = r.head().map_or((0, 0), |h| (h.bytes, h.files));
    VolumeView {
        in_use_by: r.lease.as_ref().map(|l| l.instance.clone()),
        attention: r
            .snapshots
            .iter()
            .filter(|s| s.status != SnapshotStatus::Saved)
            .count(),
        snapshots: r
            .snapshots
            .into_iter()
            .map(|s| SnapshotView {
                head: Some(s.id) == head,
                id: s.id,
                status: status(s.status),
                generation: s.generation,
                reason: s.reason,
                bytes: s.bytes,
                files: s.files,
                created_ms: s.created_ms,
                by: s.by,
                manifest: s.manifest.to_hex(),
            })
            .collect(),
        owner: r.owner,
        name: r.name,
        created_ms: r.created_ms,
        generation: r.generation,
        bytes,
        files,
    }
}

impl Service {
    /// Whose volumes the caller acts on: their own, or (admins) `owner`'s.
    fn volume_owner<'a>(
        &self,
        caller: &'a Caller,
        owner: Option<&'a str>,
    ) -> ServiceResult<&'a str> {
        let p = caller.user()?;
        match owner {
            Some(o) if o != p.name() => {
                caller.admin()?;
                Ok(o)
            }
            _ => Ok(p.name()),
        }
    }

    /// Takes the lease of `owner`'s volume `name` for launch `id` (the launch's
    /// one door to volumes). An instance that held it from an unreachable host is
    /// stopped: the owner chose to go on elsewhere.
    pub(super) async fn take_volume(
        &self,
        owner: &str,
        name: &str,
        id: &InstanceId,
        spec: &BlueprintVolume,
    ) -> ServiceResult<InstanceVolume> {
        let instances = &self.app.instances;
        let got = self
            .app
            .volumes
            .acquire(
                owner,
                name,
                id.as_str(),
                |h| instances.lease_holder(h),
                now(),
            )
            .await?;
        if let Some(old) = got
            .moved_from
            .as_deref()
            .and_then(|o| InstanceId::parse(o).ok())
        {
            let reason = format!("relaunched as {id} while its host was unreachable");
            instances.stop(&old, reason, now()).await?;
        }
        Ok(InstanceVolume {
            name: name.to_string(),
            mount: VolumeMount {
                volume: format!("{owner}/{name}"),
                head: got.head,
                generation: got.generation,
                bytes: got.bytes,
                path: spec.path.clone(),
                checkpoint_secs: spec.checkpoint_secs,
                owner: spec.owner,
            },
        })
    }

    /// The caller's volumes (or `owner`'s, for admins; everyone's with `all`).
    pub fn list_volumes(
        &self,
        caller: &Caller,
        owner: Option<&str>,
        all: bool,
    ) -> ServiceResult<Vec<VolumeView>> {
        let owner = if all {
            caller.admin()?;
            None
        } else {
            Some(self.volume_owner(caller, owner)?)
        };
        Ok(self
            .app
            .volumes
            .list(owner)?
            .into_iter()
            .map(volume_view)
            .collect())
    }

    /// One volume with its snapshots.
    pub fn volume(
        &self,
        caller: &Caller,
        owner: Option<&str>,
        name: &str,
    ) -> ServiceResult<VolumeView> {
        let owner = self.volume_owner(caller, owner)?;
        Volumes::check_name(name)?;
        self.app
            .volumes
            .get(owner, name)?
            .map(volume_view)
            .ok_or_else(|| VolumesError::NotFound(name.to_string()).into())
    }

    /// Makes snapshot `snapshot` the head of a volume nobody writes: restores an
    /// older one, confirms a halted one, or takes a conflict's files.
    pub async fn set_volume_head(
        &self,
        caller: &Caller,
        owner: Option<&str>,
        name: &str,
        snapshot: u64,
    ) -> ServiceResult<VolumeView> {
        let by = caller.user()?.name().to_string();
        let owner = self.volume_owner(caller, owner)?;
        Volumes::check_name(name)?;
        let instances = &self.app.instances;
        let rec = self
            .app
            .volumes
            .set_head(
                owner,
                name,
                snapshot,
                &by,
                |h| instances.lease_holder(h),
                now(),
            )
            .await?;
        Ok(volume_view(rec))
    }

    /// Deletes a volume nobody writes, with every snapshot.
    pub async fn remove_volume(
        &self,
        caller: &Caller,
        owner: Option<&str>,
        name: &str,
    ) -> ServiceResult<VolumeView> {
        let owner = self.volume_owner(caller, owner)?;
        Volumes::check_name(name)?;
        let instances = &self.app.instances;
        let rec = self
            .app
            .volumes
            .remove(owner, name, |h| instances.lease_holder(h))
            .await?;
        Ok(volume_view(rec))
    }

    /// A snapshot's files as a tar stream (whoever may see the volume).
    pub async fn snapshot_tar(
        &self,
        caller: &Caller,
        owner: Option<&str>,
        name: &str,
        snapshot: u64,
    ) -> ServiceResult<crate::volumes::tar::TarDownload> {
        let owner = self.volume_owner(caller, owner)?;
        Volumes::check_name(name)?;
        let rec = self
            .app
            .volumes
            .get(owner, name)?
            .ok_or_else(|| VolumesError::NotFound(name.to_string()))?;
        let s = rec
            .snapshot(snapshot)
            .ok_or_else(|| VolumesError::NoSnapshot {
                volume: format!("{owner}/{name}"),
                snapshot,
            })?;
        let m = self.app.volumes.manifest(s.manifest).await?;
        Ok(crate::volumes::tar::stream(
            m,
            self.app.chunks.clone(),
            format!("{name}-{snapshot}.tar"),
            format!("{owner}/{name}#{snapshot}"),
        ))
    }
}
