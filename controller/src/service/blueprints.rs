//! Blueprints: the catalogue (users see the enabled ones, admins all), and for
//! admins create, edit (each a new revision), enable/disable, refresh the image,
//! and the revision history.
//!
//! Saves resolve the image first; a tag that cannot be resolved is an invalid
//! `image` field and nothing is saved. Saves hold the image-use lock so an image
//! archive cannot be removed while a blueprint starts using it.

use super::views::Refreshed;
use super::{now, Caller, Service, ServiceError, ServiceResult};
use crate::blueprints::catalog::Revision;
use crate::blueprints::{BlueprintInput, BlueprintRecord, CatalogError};
use crate::datasets::lookup as datasets;
use crate::images::resolve::Resolver;

impl From<CatalogError> for ServiceError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Invalid(fields) => {
                let summary = fields
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                ServiceError::new(
                    super::Kind::Invalid,
                    "invalid_blueprint",
                    format!("invalid blueprint: {summary}"),
                )
                .with_fields(fields)
            }
            CatalogError::Exists(_) => ServiceError::conflict("already_exists", e.to_string()),
            CatalogError::NotFound(_) => ServiceError::not_found(e.to_string()),
            CatalogError::Store(s) => ServiceError::internal(s),
        }
    }
}

fn no_such(name: &str) -> ServiceError {
    ServiceError::not_found(format!("no blueprint named {name:?}"))
}

fn check_name(name: &str) -> ServiceResult<()> {
    if crate::blueprints::spec::valid_name(name) {
        Ok(())
    } else {
        Err(no_such(name))
    }
}

impl Service {
    /// Whether the datasets `input` names exist (pinned versions too), before
    /// anything is saved. A missing one is a field error (`datasets[0].name: no
    /// dataset "x"`), reported with the input's other problems. Inputs whose
    /// `datasets` are malformed pass here: the catalogue's validation reports them.
    fn check_datasets(&self, input: &BlueprintInput, name: Option<&str>) -> ServiceResult<()> {
        let mut syntax = vec![];
        let list =
            crate::blueprints::spec::validate_datasets(input.datasets.as_deref(), &mut syntax);
        if !syntax.is_empty() || list.is_empty() {
            return Ok(());
        }
        let missing = datasets::check(&list, &self.app.instances.dataset_lookup());
        if missing.is_empty() {
            return Ok(());
        }
        let named = BlueprintInput {
            name: name.map(str::to_string).or_else(|| input.name.clone()),
            ..input.clone()
        };
        let mut fields = crate::blueprints::spec::validate(&named)
            .err()
            .unwrap_or_default();
        fields.extend(missing);
        Err(CatalogError::Invalid(fields).into())
    }

    /// The blueprints the caller may launch (admins: all of them).
    pub fn list_blueprints(&self, caller: &Caller) -> ServiceResult<Vec<BlueprintRecord>> {
        caller.user()?;
        let admin = caller.is_admin();
        Ok(self
            .app
            .blueprints
            .list()?
            .into_iter()
            .filter(|b| admin || b.spec.enabled)
            .collect())
    }

    pub fn blueprint(&self, caller: &Caller, name: &str) -> ServiceResult<BlueprintRecord> {
        caller.user()?;
        check_name(name)?;
        let admin = caller.is_admin();
        self.app
            .blueprints
            .get(name)?
            .filter(|b| admin || b.spec.enabled)
            .ok_or_else(|| no_such(name))
    }

    pub async fn create_blueprint(
        &self,
        caller: &Caller,
        input: &BlueprintInput,
    ) -> ServiceResult<BlueprintRecord> {
        let p = caller.admin()?;
        self.check_datasets(input, None)?;
        let _use = self.image_use.lock().await;
        let r = self
            .app
            .blueprints
            .create(input, &Resolver::of(&self.app), now())
            .await?;
        tracing::info!(blueprint = %r.spec.name, revision = r.revision, image = %r.spec.run_image(), by = %p.name(), "blueprint created");
        Ok(r)
    }

    pub async fn update_blueprint(
        &self,
        caller: &Caller,
        name: &str,
        input: &BlueprintInput,
    ) -> ServiceResult<BlueprintRecord> {
        let p = caller.admin()?;
        check_name(name)?;
        self.check_datasets(input, Some(name))?;
        let _use = self.image_use.lock().await;
        let r = self
            .app
            .blueprints
            .update(name, input, &Resolver::of(&self.app), now())
            .await?;
        tracing::info!(blueprint = %name, revision = r.revision, image = %r.spec.run_image(), by = %p.name(), "blueprint updated");
        Ok(r)
    }

    pub async fn set_blueprint_enabled(
        &self,
        caller: &Caller,
        name: &str,
        enabled: bool,
    ) -> ServiceResult<BlueprintRecord> {
        let p = caller.admin()?;
        check_name(name)?;
        let _use = self.image_use.lock().await;
        let r = self
            .app
            .blueprints
            .set_enabled(name, enabled, now())
            .await?;
        tracing::info!(blueprint = %name, enabled, revision = r.revision, by = %p.name(), "blueprint enabled flag set");
        Ok(r)
    }

    /// Resolves the image's tag again: a moved tag makes a new revision; running
    /// instances keep the one they started with.
    pub async fn refresh_blueprint(&self, caller: &Caller, name: &str) -> ServiceResult<Refreshed> {
        let p = caller.admin()?;
        check_name(name)?;
        let _use = self.image_use.lock().await;
        let (blueprint, changed) = self
            .app
            .blueprints
            .refresh(name, &Resolver::of(&self.app), now())
            .await?;
        tracing::info!(blueprint = %name, changed, revision = blueprint.revision, image = %blueprint.spec.run_image(), by = %p.name(), "blueprint image refreshed");
        Ok(Refreshed { changed, blueprint })
    }

    pub fn blueprint_revisions(&self, caller: &Caller, name: &str) -> ServiceResult<Vec<Revision>> {
        caller.admin()?;
        check_name(name)?;
        let revs = self.app.blueprints.revisions(name)?;
        if revs.is_empty() {
            return Err(no_such(name));
        }
        Ok(revs)
    }
}
