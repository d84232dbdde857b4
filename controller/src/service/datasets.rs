//! Datasets (course material): admins push and remove them, any signed-in user may
//! list and read them. A push is three kinds of call: which chunks are missing,
//! packs of chunks, and the commit of the manifest (see `cairn_api::datasets`).

use bytes::Bytes;
use cairn_api::datasets::{
    CommitAnswer, DatasetRecord as RecordView, DatasetVersionView, MissingAnswer, PackAnswer,
    MAX_MISSING_QUERY,
};
use cairn_api::error::FieldError;
use cairn_shared::chunks::ChunkId;

use super::{now, Caller, Kind, Service, ServiceError, ServiceResult};
use crate::chunks::pack::{self, PackError};
use crate::chunks::ChunkStoreError;
use crate::datasets::{DatasetRecord, DatasetVersion, DatasetsError};

impl From<ChunkStoreError> for ServiceError {
    fn from(e: ChunkStoreError) -> Self {
        match &e {
            ChunkStoreError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                tracing::error!(error = %e, "chunk store: disk full");
                ServiceError::new(
                    Kind::StorageFull,
                    "disk_full",
                    "the controller's disk is full; remove unused datasets (`cairn datasets rm`) or free space, then push again",
                )
            }
            ChunkStoreError::TooLarge { .. } => {
                ServiceError::new(Kind::TooLarge, "too_large", e.to_string())
            }
            _ => ServiceError::internal(e),
        }
    }
}

impl From<DatasetsError> for ServiceError {
    fn from(e: DatasetsError) -> Self {
        use DatasetsError as E;
        match e {
            E::InvalidName(_) => {
                ServiceError::invalid(e.to_string()).with_fields(vec![FieldError {
                    field: "name".into(),
                    message: crate::datasets::NAME_RULE.into(),
                }])
            }
            E::InvalidManifest(ref rule) => {
                let rule = rule.clone();
                ServiceError::new(Kind::Invalid, "invalid_manifest", e.to_string()).with_fields(
                    vec![FieldError {
                        field: "manifest".into(),
                        message: rule,
                    }],
                )
            }
            E::ChunksMissing { .. } => ServiceError::conflict("chunks_missing", e.to_string()),
            E::NotFound(_) | E::VersionNotFound { .. } => ServiceError::not_found(e.to_string()),
            E::TooManyVersions(_) => ServiceError::conflict("limit_reached", e.to_string()),
            E::Chunks(c) => c.into(),
            E::ManifestLost { .. } | E::Store(_) => ServiceError::internal(e),
        }
    }
}

fn view(v: DatasetVersion) -> DatasetVersionView {
    DatasetVersionView {
        name: v.name,
        version: v.version,
        manifest: v.manifest.to_hex(),
        bytes: v.bytes,
        files: v.files,
        created_ms: v.created_ms,
        pushed_by: v.pushed_by,
    }
}

fn record_view(r: DatasetRecord) -> RecordView {
    RecordView {
        name: r.name,
        created_ms: r.created_ms,
        versions: r.versions.into_iter().map(view).collect(),
    }
}

impl Service {
    /// How long a door waits for the next piece of a request body: the listener's
    /// keep-alive idle timeout, the longest silence the controller tolerates.
    pub fn body_stall(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.app.config.api.idle_timeout_secs)
    }

    /// Who may push bytes (chunks, dataset versions, image archives): admins, for
    /// now. Doors call it before they read a body, so a stranger cannot make the
    /// controller read megabytes it will refuse; the operations call it too.
    pub fn may_push<'a>(&self, caller: &'a Caller) -> ServiceResult<&'a crate::users::Principal> {
        caller.admin()
    }

    /// Which of `ids` the chunk store lacks, in the order asked (pushers only).
    pub async fn missing_chunks(
        &self,
        caller: &Caller,
        ids: &[String],
    ) -> ServiceResult<MissingAnswer> {
        self.may_push(caller)?;
        if ids.len() > MAX_MISSING_QUERY {
            return Err(ServiceError::invalid(format!(
                "at most {MAX_MISSING_QUERY} ids per query ({} given); ask in batches",
                ids.len()
            )));
        }
        let parsed = ids
            .iter()
            .map(|s| {
                ChunkId::from_hex(s).ok_or_else(|| {
                    ServiceError::invalid(format!(
                        "{:?} is not a chunk id (64 lowercase hex digits)",
                        s.chars().take(80).collect::<String>()
                    ))
                })
            })
            .collect::<ServiceResult<Vec<_>>>()?;
        let present = self.app.chunks.contains(&parsed).await?;
        Ok(MissingAnswer {
            missing: parsed
                .iter()
                .zip(present)
                .filter(|(_, p)| !p)
                .map(|(id, _)| id.to_hex())
                .collect(),
        })
    }

    /// Stores a pack of chunks (pushers only). Every frame is checked against its id
    /// before any is stored: a bad one refuses the whole pack, naming the chunk.
    pub async fn store_pack(&self, caller: &Caller, body: Bytes) -> ServiceResult<PackAnswer> {
        self.may_push(caller)?;
        let checked = body.clone();
        // Hashing up to 32 MiB is CPU work: off the async threads.
        let frames = tokio::task::spawn_blocking(move || pack::parse(&checked))
            .await
            .map_err(ServiceError::internal)?
            .map_err(|e: PackError| {
                let code = if matches!(e, PackError::Mismatch { .. }) {
                    "chunk_mismatch"
                } else {
                    "invalid_pack"
                };
                let mut err = ServiceError::new(Kind::Invalid, code, e.to_string());
                if let Some(id) = e.id() {
                    err = err.with_fields(vec![FieldError {
                        field: id.to_hex(),
                        message: e.to_string(),
                    }]);
                }
                err
            })?;
        let ids: Vec<ChunkId> = frames.iter().map(|(id, _)| *id).collect();
        let present = self.app.chunks.contains(&ids).await?;
        let mut answer = PackAnswer {
            stored: 0,
            already: 0,
        };
        let mut seen = std::collections::HashSet::new();
        let mut new = vec![];
        for ((id, range), here) in frames.into_iter().zip(present) {
            if here || !seen.insert(id) {
                answer.already += 1;
            } else {
                new.push((id, range));
            }
        }
        answer.stored = new.len() as u64;
        // One flush for the pack: durable before the client hears "stored".
        self.app
            .chunks
            .put_many(
                new.into_iter()
                    .map(|(id, range)| (id, body.slice(range)))
                    .collect(),
            )
            .await?;
        Ok(answer)
    }

    /// Commits a manifest as the next version of `name` (pushers only).
    pub async fn commit_dataset(
        &self,
        caller: &Caller,
        name: &str,
        manifest: &[u8],
    ) -> ServiceResult<CommitAnswer> {
        let p = self.may_push(caller)?;
        let c = self
            .app
            .datasets
            .commit(name, manifest, p.name(), now())
            .await?;
        self.app.store.flush().await?;
        Ok(CommitAnswer {
            version: view(c.version),
            unchanged: c.unchanged,
        })
    }

    /// Who uses dataset `name` (version `version`, or any): instances not yet ended
    /// that mount it, and enabled blueprints that name it (at that pinned version,
    /// or at all when the whole dataset would go).
    fn dataset_users(&self, name: &str, version: Option<u32>) -> ServiceResult<Vec<String>> {
        let mut users: Vec<String> = self
            .app
            .instances
            .list(None)
            .into_iter()
            .filter(|i| !i.state.is_terminal())
            .filter(|i| {
                i.datasets.iter().any(|m| {
                    m.dataset.name == name && version.is_none_or(|v| m.dataset.version == v)
                })
            })
            .map(|i| format!("instance {} ({})", i.id, i.owner))
            .collect();
        users.extend(
            self.app
                .blueprints
                .list()?
                .into_iter()
                .filter(|b| b.spec.enabled)
                .filter(|b| {
                    b.spec
                        .datasets
                        .iter()
                        .any(|d| d.name == name && (version.is_none() || d.version == version))
                })
                .map(|b| format!("blueprint {}", b.spec.name)),
        );
        Ok(users)
    }

    /// Commits a manifest sent as a [`Delta`] from one the store holds (the previous
    /// version, usually): the same rules as [`Service::commit_dataset`] once it is
    /// rebuilt. A base the store does not hold is a conflict (`base_unknown`): the
    /// pusher sends the whole manifest instead.
    ///
    /// [`Delta`]: cairn_shared::chunks::delta::Delta
    pub async fn commit_dataset_delta(
        &self,
        caller: &Caller,
        name: &str,
        delta: &[u8],
    ) -> ServiceResult<CommitAnswer> {
        use cairn_shared::chunks::delta::{apply, Delta};
        self.may_push(caller)?;
        let limit = crate::datasets::max_manifest_bytes();
        let bad = |e: cairn_shared::chunks::delta::DeltaError| {
            ServiceError::new(
                Kind::Invalid,
                "bad_delta",
                format!("manifest delta refused: {e}"),
            )
        };
        let d = Delta::decode(delta, limit).map_err(bad)?;
        let base = self.app.chunks.get(d.base).await?.ok_or_else(|| {
            ServiceError::conflict(
                "base_unknown",
                format!(
                    "the controller does not hold manifest {}; send the whole manifest",
                    d.base
                ),
            )
        })?;
        let manifest = tokio::task::spawn_blocking(move || apply(&d, &base, limit))
            .await
            .map_err(ServiceError::internal)?
            .map_err(bad)?;
        self.commit_dataset(caller, name, &manifest).await
    }

    /// Every dataset (any signed-in user: datasets are course material).
    pub fn list_datasets(&self, caller: &Caller) -> ServiceResult<Vec<RecordView>> {
        caller.user()?;
        Ok(self
            .app
            .datasets
            .list()?
            .into_iter()
            .map(record_view)
            .collect())
    }

    /// One dataset with its versions.
    pub fn dataset(&self, caller: &Caller, name: &str) -> ServiceResult<RecordView> {
        caller.user()?;
        self.app
            .datasets
            .get(name)?
            .map(record_view)
            .ok_or_else(|| DatasetsError::NotFound(name.to_string()).into())
    }

    /// The encoded manifest of `name@version` (`None`: the latest).
    pub async fn dataset_manifest(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<u32>,
    ) -> ServiceResult<(DatasetVersionView, Bytes)> {
        caller.user()?;
        let v = self.app.datasets.resolve(name, version)?;
        let bytes = self.app.datasets.manifest_bytes(&v).await?;
        Ok((view(v), bytes))
    }

    /// Removes a whole dataset (`version: None`) or one version (pushers only). The
    /// one way removals go, so a rule about what may be removed (a version an
    /// enabled blueprint mounts, say) has one place to live. The chunks no version
    /// references any more are collected right after.
    pub async fn remove_dataset(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<u32>,
    ) -> ServiceResult<Vec<DatasetVersionView>> {
        let p = caller.admin()?;
        // Nothing running or about to launch may lose what it mounts.
        let users = self.dataset_users(name, version)?;
        if !users.is_empty() {
            let what = match version {
                Some(v) => format!("dataset {name}@{v}"),
                None => format!("dataset {name}"),
            };
            return Err(ServiceError::conflict(
                "dataset_in_use",
                format!(
                    "{what} is in use by {}; stop those instances and change or disable those blueprints first",
                    users.join(", ")
                ),
            ));
        }
        let gone = match version {
            None => self.app.datasets.remove(name)?.versions,
            Some(v) => vec![self.app.datasets.remove_version(name, v)?],
        };
        self.app.store.flush().await?;
        tracing::info!(dataset = name, ?version, versions = gone.len(), by = %p.name(), "dataset removed");
        let app = self.app.clone();
        tokio::spawn(async move { crate::app::collect_chunks(&app).await });
        Ok(gone.into_iter().map(view).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use cairn_shared::chunks::manifest::{Entry, EntryKind, Manifest};
    use cairn_shared::chunks::{ChunkId, ChunkRef, DEFAULT_PARAMS};

    use crate::chunks::pack::push_frame;
    use crate::service::testing::World;
    use crate::service::{Caller, Kind};

    fn file(path: &str, chunks: &[&[u8]]) -> Entry {
        let refs: Vec<ChunkRef> = chunks
            .iter()
            .map(|c| ChunkRef {
                id: ChunkId::of(c),
                len: c.len() as u32,
            })
            .collect();
        Entry {
            path: path.into(),
            size: chunks.iter().map(|c| c.len() as u64).sum(),
            kind: EntryKind::File { chunks: refs },
            mode: 0o644,
            mtime_ns: 0,
        }
    }

    fn manifest(entries: Vec<Entry>) -> Vec<u8> {
        Manifest::new(DEFAULT_PARAMS, entries).encode()
    }

    fn pack(chunks: &[&[u8]]) -> Bytes {
        let mut p = vec![];
        for c in chunks {
            push_frame(&mut p, ChunkId::of(c), c);
        }
        Bytes::from(p)
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, crate::service::ServiceError>) -> Kind {
        r.expect_err("expected a refusal").kind
    }

    async fn push(w: &World, name: &str, chunks: &[&[u8]], m: &[u8]) -> (u32, bool) {
        if !chunks.is_empty() {
            w.service.store_pack(&w.admin, pack(chunks)).await.unwrap();
        }
        let a = w.service.commit_dataset(&w.admin, name, m).await.unwrap();
        (a.version.version, a.unchanged)
    }

    #[tokio::test]
    async fn only_admins_push_and_remove_and_signed_in_users_read() {
        let w = World::new().await;
        let s = &w.service;
        let m = manifest(vec![file("a.txt", &[b"hello"])]);
        let id = ChunkId::of(b"hello").to_hex();
        assert_eq!(
            refused(s.missing_chunks(&w.alice, std::slice::from_ref(&id)).await),
            Kind::Forbidden
        );
        assert_eq!(
            refused(s.store_pack(&w.alice, pack(&[b"hello"])).await),
            Kind::Forbidden
        );
        assert_eq!(
            refused(s.commit_dataset(&w.alice, "physics", &m).await),
            Kind::Forbidden
        );
        let nobody = Caller::anonymous();
        assert_eq!(refused(s.list_datasets(&nobody)), Kind::Unauthenticated);
        assert_eq!(
            refused(s.commit_dataset(&nobody, "physics", &m).await),
            Kind::Unauthenticated
        );

        assert_eq!(
            s.missing_chunks(&w.admin, std::slice::from_ref(&id))
                .await
                .unwrap()
                .missing,
            vec![id.clone()]
        );
        assert_eq!(push(&w, "physics", &[b"hello"], &m).await, (1, false));
        assert!(s
            .missing_chunks(&w.admin, &[id])
            .await
            .unwrap()
            .missing
            .is_empty());

        // Users read: list, show, the manifest.
        let list = s.list_datasets(&w.alice).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].versions[0].pushed_by, "root");
        assert_eq!(
            (list[0].versions[0].files, list[0].versions[0].bytes),
            (1, 5)
        );
        let (_, bytes) = s.dataset_manifest(&w.bob, "physics", None).await.unwrap();
        assert_eq!(&bytes[..], &m[..]);

        assert_eq!(
            refused(s.remove_dataset(&w.alice, "physics", None).await),
            Kind::Forbidden
        );
        assert_eq!(
            refused(s.remove_dataset(&w.alice, "physics", Some(1)).await),
            Kind::Forbidden
        );
        assert!(s.dataset(&w.alice, "physics").is_ok());
        s.remove_dataset(&w.admin, "physics", None).await.unwrap();
        assert_eq!(refused(s.dataset(&w.alice, "physics")), Kind::NotFound);
    }

    #[tokio::test]
    async fn an_unchanged_push_creates_no_version_and_versions_are_never_reused() {
        let w = World::new().await;
        let s = &w.service;
        let m1 = manifest(vec![file("a", &[b"one"])]);
        let m2 = manifest(vec![file("a", &[b"two"])]);
        assert_eq!(push(&w, "ds", &[b"one"], &m1).await, (1, false));
        assert_eq!(push(&w, "ds", &[b"one"], &m1).await, (1, true));
        assert_eq!(s.dataset(&w.admin, "ds").unwrap().versions.len(), 1);
        assert_eq!(push(&w, "ds", &[b"two"], &m2).await, (2, false));
        // Pushing v1's tree again is a change from the latest: a new version.
        assert_eq!(push(&w, "ds", &[], &m1).await.0, 3);
        s.remove_dataset(&w.admin, "ds", Some(3)).await.unwrap();
        assert_eq!(push(&w, "ds", &[], &m1).await.0, 4);
        let d = s.dataset(&w.alice, "ds").unwrap();
        assert_eq!(
            d.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert_eq!(s.app.datasets.resolve("ds", None).unwrap().version, 4);
        assert_eq!(s.app.datasets.resolve("ds", Some(2)).unwrap().version, 2);
        assert!(s.app.datasets.resolve("ds", Some(3)).is_err());
    }

    #[tokio::test]
    async fn a_manifest_with_missing_chunks_is_refused_with_the_count_and_ids() {
        let w = World::new().await;
        let s = &w.service;
        s.store_pack(&w.admin, pack(&[b"here"])).await.unwrap();
        let m = manifest(vec![
            file("a", &[b"here", b"gone1"]),
            file("b", &[b"gone2"]),
        ]);
        let e = s.commit_dataset(&w.admin, "ds", &m).await.unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Conflict, "chunks_missing"));
        assert!(e.message.starts_with("2 chunk(s)"), "{}", e.message);
        assert!(
            e.message.contains(&ChunkId::of(b"gone1").to_hex()),
            "{}",
            e.message
        );
        assert_eq!(s.dataset(&w.admin, "ds").unwrap_err().kind, Kind::NotFound);
    }

    #[tokio::test]
    async fn a_bad_manifest_is_refused_with_the_rule() {
        let w = World::new().await;
        let s = &w.service;
        let e = s
            .commit_dataset(&w.admin, "ds", b"not a manifest")
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Invalid, "invalid_manifest"));
        // A size that disagrees with the chunks.
        let mut bad = file("a", &[b"x"]);
        bad.size = 2;
        let e = s
            .commit_dataset(&w.admin, "ds", &manifest(vec![bad]))
            .await
            .unwrap_err();
        assert_eq!(e.code, "invalid_manifest");
        assert_eq!(e.fields[0].field, "manifest");
        assert!(e.fields[0].message.contains("\"a\""), "{:?}", e.fields);
        // A bad name.
        let m = manifest(vec![file("a", &[b"x"])]);
        let e = s
            .commit_dataset(&w.admin, "Bad_Name", &m)
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.fields[0].field.as_str()),
            (Kind::Invalid, "name")
        );
    }

    #[tokio::test]
    async fn a_forged_chunk_refuses_the_pack_naming_it() {
        let w = World::new().await;
        let s = &w.service;
        let forged = ChunkId::of(b"claimed");
        let mut p = vec![];
        push_frame(&mut p, ChunkId::of(b"good"), b"good");
        push_frame(&mut p, forged, b"actual");
        let e = s.store_pack(&w.admin, Bytes::from(p)).await.unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Invalid, "chunk_mismatch"));
        assert!(e.message.contains(&forged.to_hex()));
        // Nothing of the pack was stored.
        let asked = [ChunkId::of(b"good").to_hex(), forged.to_hex()];
        assert_eq!(
            s.missing_chunks(&w.admin, &asked)
                .await
                .unwrap()
                .missing
                .len(),
            2
        );
        let a = s
            .store_pack(&w.admin, pack(&[b"good", b"good"]))
            .await
            .unwrap();
        assert_eq!((a.stored, a.already), (1, 1));
    }

    #[tokio::test]
    async fn the_collector_keeps_live_chunks_and_sweeps_old_unreferenced_ones() {
        let w = World::new().await;
        let s = &w.service;
        let m = manifest(vec![file("a", &[b"live"])]);
        push(&w, "ds", &[b"live", b"stray"], &m).await;
        // Everything is young: a zero grace would sweep the stray only.
        let far_future = cairn_shared::time::now_ms() + 10_000;
        let swept = s.app.datasets.collect_garbage(far_future, 1).await.unwrap();
        assert_eq!(swept.chunks, 1);
        let asked = [
            ChunkId::of(b"live").to_hex(),
            ChunkId::of(b"stray").to_hex(),
        ];
        assert_eq!(
            s.missing_chunks(&w.admin, &asked).await.unwrap().missing,
            vec![asked[1].clone()]
        );
        assert!(s.dataset_manifest(&w.alice, "ds", Some(1)).await.is_ok());
        // With the default grace nothing young goes.
        s.remove_dataset(&w.admin, "ds", None).await.unwrap();
        let swept = s
            .app
            .datasets
            .collect_garbage(cairn_shared::time::now_ms(), 24 * 3_600_000)
            .await
            .unwrap();
        assert_eq!(swept.chunks, 0);
        let swept = s.app.datasets.collect_garbage(far_future, 1).await.unwrap();
        assert_eq!(swept.chunks, 2, "the chunk and the manifest");
    }
}
