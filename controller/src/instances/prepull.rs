//! The pre-pull plan: which images each host should hold before anyone launches
//! them, from the enabled blueprints and the hosts' reported images, with the
//! registry logins agents pull with.

use std::collections::{BTreeMap, BTreeSet};

use cairn_shared::ids::HostId;
use cairn_shared::images::{DesiredImages, ImageSpec, RegistryCredential};

use crate::blueprints::BlueprintRecord;
use crate::hosts::pool::Standing;
use crate::hosts::{HostState, HostView};
use crate::images::plan::{HostImages, WantedImage};
use crate::images::reference::Reference;

/// The plan last computed.
#[derive(Debug, Default, Clone)]
pub struct ImagePlan {
    pub per_host: BTreeMap<HostId, Vec<ImageSpec>>,
    pub credentials: Vec<RegistryCredential>,
}

impl ImagePlan {
    /// Computes the plan for `hosts` from the `blueprints` (only enabled ones count).
    pub fn compute(
        blueprints: &[BlueprintRecord],
        hosts: &[HostView],
        credentials: Vec<RegistryCredential>,
    ) -> Self {
        let wanted: Vec<WantedImage> = blueprints
            .iter()
            .filter(|b| b.spec.enabled)
            .map(|b| WantedImage {
                image: ImageSpec {
                    reference: b.spec.run_image().to_string(),
                    source: b.spec.image_source(),
                },
                prepull: b.spec.prepull,
                placement: b.spec.placement.clone(),
                blueprint: b.spec.name.clone(),
            })
            .collect();
        let views: Vec<HostImages> = hosts
            .iter()
            .filter(|h| h.pool.standing != Standing::Removed)
            .map(|h| HostImages {
                id: h.id.clone(),
                labels: h.labels.clone(),
                eligible: h.connected && h.state == HostState::Active && h.pool.open(),
                present: present_images(h),
            })
            .collect();
        ImagePlan {
            per_host: crate::images::plan::plan(&wanted, &views),
            credentials,
        }
    }

    /// What `host` should hold.
    pub fn for_host(&self, host: &HostId) -> DesiredImages {
        DesiredImages {
            prepull: self.per_host.get(host).cloned().unwrap_or_default(),
            credentials: self.credentials.clone(),
        }
    }
}

/// Every name a host's images answer to, as agents report them: tags, image ids
/// (uploaded images run by id) and digest references (registry images run by
/// digest), so the scheduler's image bonus and the pre-pull plan see what is really
/// there.
pub fn present_images(h: &HostView) -> BTreeSet<String> {
    match &h.runtime {
        Some(cairn_shared::resources::RuntimeFacts::Docker(d)) => d
            .images
            .iter()
            .flat_map(|i| {
                i.tags
                    .iter()
                    .chain(&i.repo_digests)
                    .cloned()
                    .chain([i.id.clone()])
            })
            .flat_map(|name| {
                // Docker reports Docker Hub digests without `docker.io/library/`;
                // blueprints run the canonical form.
                let canonical = Reference::parse(&name).ok().and_then(|r| {
                    r.digest()
                        .map(|d| r.canonical_digest_reference(d))
                        .filter(|c| *c != name)
                });
                [Some(name), canonical].into_iter().flatten()
            })
            .collect(),
        _ => Default::default(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_shared::resources::{DockerFacts, ImageInfo, RuntimeFacts};

    #[test]
    fn a_host_holds_an_image_by_tag_id_and_canonical_digest() {
        let digest = format!("sha256:{}", "1".repeat(64));
        let mut r = crate::hosts::HostRecord::new(HostId::generate(), "h".into(), "t".into(), 0, 0);
        r.runtime = Some(RuntimeFacts::Docker(DockerFacts {
            images: vec![ImageInfo {
                id: "sha256:abc".into(),
                tags: vec!["python:3.11".into()],
                // Docker's short form for a Docker Hub image pulled by digest.
                repo_digests: vec![format!("python@{digest}")],
                size_bytes: 1,
                created_unix: 0,
            }],
            ..Default::default()
        }));
        let view = HostView::from(&r);
        let present = present_images(&view);
        for name in [
            "python:3.11".to_string(),
            "sha256:abc".to_string(),
            format!("python@{digest}"),
            // What a blueprint resolved through Docker Hub runs.
            format!("docker.io/library/python@{digest}"),
        ] {
            assert!(present.contains(&name), "{name} in {present:?}");
        }
        // The scheduler sees the same set.
        let snap = super::super::books::snapshot(&view);
        assert!(snap
            .images
            .contains(&format!("docker.io/library/python@{digest}")));
    }
}
