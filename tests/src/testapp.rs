//! The test app image: [`cairn-testapp`](../bin/cairn-testapp.rs) on a busybox root
//! file system, for proxy tests and benchmarks.
//!
//! The binary is this workspace's own build, dynamically linked against the build
//! machine's glibc, so the image carries the libraries `ldd` names at the same paths.
//! Its tag holds a hash of the binary: a rebuilt app gets a new image, an unchanged
//! one reuses the cached image.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cluster::bin;
use crate::images::{busybox_rootfs, ensure_image_with_changes};

/// The port the app listens on in its container.
pub const PORT: u16 = 8080;

/// Builds (or reuses) the test app image and returns its tag.
pub fn testapp_image() -> String {
    let exe = bin("cairn-testapp");
    let bytes = std::fs::read(&exe).expect("read the cairn-testapp binary");
    let hash = hex(&Sha256::digest(&bytes)[..6]);
    let tag = format!("cairn-test/testapp:{hash}");
    ensure_image_with_changes(
        &tag,
        &[
            r#"CMD ["/usr/local/bin/cairn-testapp"]"#.to_string(),
            format!("ENV PORT={PORT}"),
        ],
        |root| {
            busybox_rootfs(root);
            copy(&exe, root, Path::new("/usr/local/bin/cairn-testapp"));
            for lib in shared_libraries(&exe) {
                copy(Path::new(&lib), root, Path::new(&lib));
            }
        },
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The absolute paths of the shared libraries (and loader) `exe` needs.
fn shared_libraries(exe: &Path) -> Vec<String> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .expect("run ldd (Debian's libc-bin)");
    assert!(out.status.success(), "ldd {} failed", exe.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(str::to_string)
        })
        .collect()
}

/// Copies `from` to `at` inside `root`, following symlinks, keeping the mode.
fn copy(from: &Path, root: &Path, at: &Path) {
    let dest = root.join(at.strip_prefix("/").unwrap_or(at));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).expect("create a directory in the root fs");
    }
    std::fs::copy(from, &dest)
        .unwrap_or_else(|e| panic!("copy {} into the image: {e}", from.display()));
}
