//! What a blueprint's instances run, decided when the blueprint is saved or
//! refreshed, so every host runs the same bits:
//!
//! 1. `pull = "never"`: the image as written, already on every host.
//! 2. An uploaded image (`cairn images push`) carrying the blueprint's tag: its image
//!    id (`sha256:…`), fetched from the controller.
//! 3. Otherwise the registry: the tag's manifest digest now, as
//!    `REGISTRY/REPO@sha256:…`.
//!
//! Failures are field errors on `image` that say what to do, and nothing is saved.

use std::time::Duration;

use cairn_shared::images::ImageSource;

use super::registry::{self, RegistryClient, RegistryError, Target};
use crate::blueprints::catalog::ImageResolver;
use crate::blueprints::spec::{BlueprintSpec, FieldError, PullPolicy, ResolvedImage};
use crate::config::ImagesConfig;
use cairn_shared::reference::Reference;

/// An uploaded image, as far as resolution needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// `sha256:…`: what Docker calls the image once loaded.
    pub image_id: String,
    /// BLAKE3 of the archive, hex.
    pub archive: String,
    pub size_bytes: u64,
}

/// Looks up uploaded images by tag. The controller's archive store in production;
/// a closure in tests.
pub trait UploadedImages: Sync {
    /// The newest uploaded image tagged exactly `tag` (`name` alone meaning
    /// `name:latest`).
    fn by_tag(&self, tag: &str) -> Option<Uploaded>;
}

impl<F: Fn(&str) -> Option<Uploaded> + Sync> UploadedImages for F {
    fn by_tag(&self, tag: &str) -> Option<Uploaded> {
        self(tag)
    }
}

/// No uploaded images at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoUploads;

impl UploadedImages for NoUploads {
    fn by_tag(&self, _: &str) -> Option<Uploaded> {
        None
    }
}

impl UploadedImages for crate::images::archives::Archives {
    fn by_tag(&self, tag: &str) -> Option<Uploaded> {
        crate::images::archives::Archives::by_tag(self, tag).map(|r| Uploaded {
            image_id: r.image_id,
            archive: r.archive,
            size_bytes: r.size_bytes,
        })
    }
}

fn image_error(message: impl Into<String>) -> FieldError {
    FieldError {
        field: "image".into(),
        message: message.into(),
    }
}

/// Whether `s` is a full image id (`sha256:` and 64 hex digits), which Docker
/// accepts wherever a name goes.
fn is_image_id(s: &str) -> bool {
    cairn_shared::reference::valid_digest(s)
}

/// Resolves `spec`'s image; see the module documentation for the order.
pub async fn resolve(
    spec: &BlueprintSpec,
    config: &ImagesConfig,
    uploaded: &dyn UploadedImages,
    now_ms: u64,
) -> Result<ResolvedImage, FieldError> {
    let image = spec.image.trim();
    let done = |reference: String, source: ImageSource| ResolvedImage {
        reference,
        source,
        resolved_ms: now_ms,
    };
    if spec.pull == PullPolicy::Never {
        // Still a name Docker will accept: a typo should fail here, not at launch.
        if !is_image_id(image) {
            Reference::parse(image).map_err(|e| image_error(e.to_string()))?;
        }
        return Ok(done(image.to_string(), ImageSource::Host));
    }
    let reference = Reference::parse(image).map_err(|e| image_error(e.to_string()))?;
    // A digest pins a registry manifest; only a tag can name an upload.
    if reference.digest().is_none() {
        let mut names = vec![image.to_string()];
        let familiar = reference.familiar_tagged();
        if !names.contains(&familiar) {
            names.push(familiar);
        }
        if let Some(u) = names.iter().find_map(|n| uploaded.by_tag(n)) {
            tracing::info!(blueprint = %spec.name, %image, image_id = %u.image_id, archive = %u.archive, "image resolved to an uploaded archive");
            return Ok(done(
                u.image_id,
                ImageSource::Controller {
                    archive: u.archive,
                    size_bytes: u.size_bytes,
                },
            ));
        }
    }
    let entry = registry::config_for(config, &reference);
    let login = match entry.map(registry::login_of).transpose() {
        Ok(l) => l.flatten(),
        Err(e) => {
            tracing::warn!(registry = %reference.registry(), "cannot read the registry password");
            return Err(image_error(e.to_string()));
        }
    };
    let plain_http = reference.is_loopback() || entry.is_some_and(|c| c.insecure);
    let client = RegistryClient::new(Duration::from_secs(config.resolve_timeout_secs.max(1)))
        .map_err(|e| image_error(e.to_string()))?;
    let digest = client
        .manifest_digest(&Target {
            reference: &reference,
            login: login.as_ref(),
            plain_http,
        })
        .await
        .map_err(|e| {
            tracing::info!(blueprint = %spec.name, %image, error = %e, "cannot resolve the image");
            image_error(with_hint(&e))
        })?;
    let resolved = reference.canonical_digest_reference(&digest);
    tracing::info!(blueprint = %spec.name, %image, reference = %resolved, "image resolved");
    Ok(done(resolved, ImageSource::Registry))
}

/// The error, plus what to do about it where that is not obvious.
fn with_hint(e: &RegistryError) -> String {
    match e {
        RegistryError::TagNotFound { .. } => {
            format!("{e} (push it first, or upload it to the controller with `cairn images push`)")
        }
        RegistryError::Unreachable { .. } | RegistryError::Timeout { .. } => {
            format!("{e}; nothing was saved, try again when it answers")
        }
        _ => e.to_string(),
    }
}

/// The resolver blueprints are saved with: the controller's registry settings and
/// its uploaded images.
#[derive(Clone, Copy)]
pub struct Resolver<'a> {
    pub config: &'a ImagesConfig,
    pub uploaded: &'a dyn UploadedImages,
}

impl std::fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds passwords; its Debug hides them, but there is no need.
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl<'a> Resolver<'a> {
    /// The running controller's resolver.
    pub fn of(app: &'a crate::app::App) -> Self {
        Resolver {
            config: &app.config.images,
            uploaded: &app.archives,
        }
    }
}

impl ImageResolver for Resolver<'_> {
    async fn resolve(&self, spec: &BlueprintSpec) -> Result<ResolvedImage, FieldError> {
        resolve(
            spec,
            self.config,
            self.uploaded,
            cairn_shared::time::now_ms(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprints::spec::{validate, BlueprintInput};

    fn spec(image: &str, pull: Option<&str>) -> BlueprintSpec {
        validate(&BlueprintInput {
            name: Some("py".into()),
            image: Some(image.into()),
            app: Some("jupyter".into()),
            memory_mib: Some(256),
            pull: pull.map(str::to_string),
            ..Default::default()
        })
        .unwrap()
    }

    fn archive() -> String {
        "0f".repeat(32)
    }

    fn uploads(tag: &str) -> Option<Uploaded> {
        matches!(tag, "python:3.11" | "course/r:latest").then(|| Uploaded {
            image_id: format!("sha256:{}", "cd".repeat(32)),
            archive: archive(),
            size_bytes: 42,
        })
    }

    #[tokio::test]
    async fn pull_never_keeps_the_name_as_written() {
        let config = ImagesConfig::default();
        let r = resolve(
            &spec("cairn-test/busybox:1", Some("never")),
            &config,
            &uploads,
            7,
        )
        .await
        .unwrap();
        assert_eq!(
            r,
            ResolvedImage {
                reference: "cairn-test/busybox:1".into(),
                source: ImageSource::Host,
                resolved_ms: 7
            }
        );
        // Even if an upload carries the tag: never means never.
        let r = resolve(&spec("python:3.11", Some("never")), &config, &uploads, 7)
            .await
            .unwrap();
        assert_eq!(r.source, ImageSource::Host);
        let id = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            resolve(&spec(&id, Some("never")), &config, &NoUploads, 7)
                .await
                .unwrap()
                .reference,
            id
        );
        let e = resolve(&spec("Bad/Name", Some("never")), &config, &NoUploads, 7)
            .await
            .unwrap_err();
        assert_eq!(e.field, "image");
        assert!(e.message.contains("lower-case"), "{e:?}");
    }

    #[tokio::test]
    async fn uploaded_images_win_over_the_registry() {
        let config = ImagesConfig::default();
        for image in ["python:3.11", "docker.io/library/python:3.11", "course/r"] {
            let r = resolve(&spec(image, None), &config, &uploads, 9)
                .await
                .unwrap();
            assert_eq!(
                r.reference,
                format!("sha256:{}", "cd".repeat(32)),
                "{image}"
            );
            assert_eq!(
                r.source,
                ImageSource::Controller {
                    archive: archive(),
                    size_bytes: 42
                }
            );
        }
    }

    #[tokio::test]
    async fn registry_failures_are_field_errors_on_image() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = ImagesConfig {
            resolve_timeout_secs: 5,
            ..Default::default()
        };
        let e = resolve(
            &spec(&format!("127.0.0.1:{port}/course/python:3.11"), None),
            &config,
            &NoUploads,
            1,
        )
        .await
        .unwrap_err();
        assert_eq!(e.field, "image");
        assert!(
            e.message
                .starts_with(&format!("registry 127.0.0.1:{port} is unreachable")),
            "{e:?}"
        );
        let e = resolve(&spec("a@sha256:12", None), &config, &NoUploads, 1)
            .await
            .unwrap_err();
        assert!(e.message.contains("digest"), "{e:?}");
    }

    #[tokio::test]
    async fn a_missing_password_file_is_a_clear_error() {
        let config = ImagesConfig {
            registries: vec![crate::config::RegistryConfig {
                host: "127.0.0.1:9".into(),
                username: Some("course".into()),
                password: None,
                password_file: Some("/nonexistent/cairn-pw".into()),
                insecure: false,
            }],
            ..Default::default()
        };
        let e = resolve(&spec("127.0.0.1:9/x:1", None), &config, &NoUploads, 1)
            .await
            .unwrap_err();
        assert!(
            e.message.starts_with(
                "registry 127.0.0.1:9: cannot read the password file /nonexistent/cairn-pw"
            ),
            "{e:?}"
        );
    }
}
