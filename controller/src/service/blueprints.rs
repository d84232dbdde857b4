//! Blueprints: the catalogue (users see the enabled blueprints of their groups and
//! those granted to them, managers also their groups' disabled ones, admins all),
//! and for admins and group managers create, edit (each a new revision),
//! enable/disable, refresh the image, and the revision history. A manager's
//! blueprint stays within the limits an admin set for the group.
//!
//! Saves resolve the image first; a tag that cannot be resolved is an invalid
//! `image` field and nothing is saved. Saves hold the image-use lock so an image
//! archive cannot be removed while a blueprint starts using it.

use super::views::Refreshed;
use super::{now, Caller, Service, ServiceError, ServiceResult};
use crate::blueprints::catalog::Revision;
use crate::blueprints::{BlueprintInput, BlueprintRecord, CatalogError};
use crate::datasets::lookup as datasets;
use crate::groups::core::Action;
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
    /// Blueprint `name` if `caller` may change it (admins, its group's managers).
    fn editable(&self, caller: &Caller, name: &str) -> ServiceResult<BlueprintRecord> {
        let bp = self.blueprint(caller, name)?;
        if caller.is_admin() || self.may_edit_group(caller, bp.spec.group()) {
            Ok(bp)
        } else {
            Err(ServiceError::forbidden(format!(
                "this needs a manager of group {} or an admin",
                bp.spec.group()
            )))
        }
    }

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

    /// The group through which `caller` may launch `bp`: its own group if they
    /// are in it, else a group of theirs it is granted to (admins: its own).
    pub(crate) fn launch_group(&self, caller: &Caller, bp: &BlueprintRecord) -> Option<String> {
        let p = caller.principal()?;
        let own = bp.spec.group();
        if p.is_admin() {
            return Some(own.to_string());
        }
        let mine = self.app.groups.of_user(p.name(), now());
        if mine.iter().any(|(g, _)| g.name == own) {
            return Some(own.to_string());
        }
        mine.into_iter()
            .find(|(g, _)| g.granted.contains(&bp.spec.name))
            .map(|(g, _)| g.name)
    }

    /// Whether `caller` may edit the blueprints of `group`.
    fn may_edit_group(&self, caller: &Caller, group: &str) -> bool {
        self.group_for(caller, group, Action::EditBlueprints)
            .is_ok()
    }

    /// Whether `caller` sees `bp`: admins all; the managers of its group also
    /// disabled ones; everyone else the enabled blueprints they may launch.
    fn sees(&self, caller: &Caller, bp: &BlueprintRecord) -> bool {
        caller.is_admin()
            || (bp.spec.enabled && self.launch_group(caller, bp).is_some())
            || self.may_edit_group(caller, bp.spec.group())
    }

    /// The blueprints the caller sees (admins: all of them).
    pub fn list_blueprints(&self, caller: &Caller) -> ServiceResult<Vec<BlueprintRecord>> {
        caller.user()?;
        Ok(self
            .app
            .blueprints
            .list()?
            .into_iter()
            .filter(|b| self.sees(caller, b))
            .collect())
    }

    pub fn blueprint(&self, caller: &Caller, name: &str) -> ServiceResult<BlueprintRecord> {
        caller.user()?;
        check_name(name)?;
        self.app
            .blueprints
            .get(name)?
            .filter(|b| self.sees(caller, b))
            .ok_or_else(|| no_such(name))
    }

    /// Whether `caller` may save `input` as a blueprint of its group (replacing
    /// `existing`): admins always; the group's managers within the limits an
    /// admin set for it (allowed images, memory, lifetime).
    fn check_editor(
        &self,
        caller: &Caller,
        input: &BlueprintInput,
        existing: Option<&BlueprintRecord>,
    ) -> ServiceResult<()> {
        let p = caller.user()?;
        if p.is_admin() {
            if let Some(g) = input.group.as_deref().filter(|g| !g.is_empty()) {
                if self.app.groups.get(g).is_none() {
                    return Err(ServiceError::invalid(format!("no group named {g:?}")));
                }
            }
            return Ok(());
        }
        if let Some(old) = existing {
            let g = old.spec.group();
            if !self.may_edit_group(caller, g) {
                return Err(ServiceError::forbidden(format!(
                    "this needs a manager of group {g} or an admin"
                )));
            }
        }
        let group = input
            .group
            .as_deref()
            .filter(|g| !g.is_empty())
            .unwrap_or(cairn_api::groups::DEFAULT_GROUP);
        let g = self.group_for(caller, group, Action::EditBlueprints)?;
        // Field errors come from the catalogue's own validation, with the rest.
        let Ok(spec) = crate::blueprints::spec::validate(input) else {
            return Ok(());
        };
        crate::groups::core::within_limits(
            &g.limits,
            &spec.image,
            spec.memory_mib,
            spec.max_lifetime_secs,
        )
        .map_err(|m| ServiceError::forbidden(format!("group {group}: {m}")))
    }

    pub async fn create_blueprint(
        &self,
        caller: &Caller,
        input: &BlueprintInput,
    ) -> ServiceResult<BlueprintRecord> {
        self.check_editor(caller, input, None)?;
        let p = caller.user()?;
        self.check_datasets(input, None)?;
        let _use = self.image_use.lock().await;
        let r = self
            .app
            .blueprints
            .create(input, &Resolver::of(&self.app), now())
            .await?;
        tracing::info!(blueprint = %r.spec.name, revision = r.revision, image = %r.spec.run_image(), by = %p.name(), "blueprint created");
        self.audit(
            caller,
            "blueprint.create",
            &r.spec.name,
            format!("group {}", r.spec.group()),
        );
        Ok(r)
    }

    pub async fn update_blueprint(
        &self,
        caller: &Caller,
        name: &str,
        input: &BlueprintInput,
    ) -> ServiceResult<BlueprintRecord> {
        let p = caller.user()?;
        // Admins edit any blueprint: a missing one, or a rename, is the
        // catalogue's to report with the input's other problems. Others must see
        // it first, and may change it only as its group's managers.
        let existing = if caller.is_admin() {
            None
        } else {
            Some(self.blueprint(caller, name)?)
        };
        let named = BlueprintInput {
            name: Some(name.to_string()),
            ..input.clone()
        };
        self.check_editor(caller, &named, existing.as_ref())?;
        self.check_datasets(input, Some(name))?;
        let _use = self.image_use.lock().await;
        let r = self
            .app
            .blueprints
            .update(name, input, &Resolver::of(&self.app), now())
            .await?;
        tracing::info!(blueprint = %name, revision = r.revision, image = %r.spec.run_image(), by = %p.name(), "blueprint updated");
        self.audit(
            caller,
            "blueprint.update",
            name,
            format!("revision {}", r.revision),
        );
        Ok(r)
    }

    pub async fn set_blueprint_enabled(
        &self,
        caller: &Caller,
        name: &str,
        enabled: bool,
    ) -> ServiceResult<BlueprintRecord> {
        let p = caller.user()?;
        self.editable(caller, name)?;
        let _use = self.image_use.lock().await;
        let r = self
            .app
            .blueprints
            .set_enabled(name, enabled, now())
            .await?;
        tracing::info!(blueprint = %name, enabled, revision = r.revision, by = %p.name(), "blueprint enabled flag set");
        self.audit(
            caller,
            if enabled {
                "blueprint.enable"
            } else {
                "blueprint.disable"
            },
            name,
            String::new(),
        );
        Ok(r)
    }

    /// Resolves the image's tag again: a moved tag makes a new revision; running
    /// instances keep the one they started with.
    pub async fn refresh_blueprint(&self, caller: &Caller, name: &str) -> ServiceResult<Refreshed> {
        let p = caller.user()?;
        self.editable(caller, name)?;
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
        self.editable(caller, name)?;
        let revs = self.app.blueprints.revisions(name)?;
        if revs.is_empty() {
            return Err(no_such(name));
        }
        Ok(revs)
    }
}
