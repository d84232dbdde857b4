//! Example content for development mode: an image built on this machine without any
//! registry, and blueprints that use it, so a fresh install can launch something
//! offline in its first minute.

use std::io::Write;

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures::StreamExt;

/// The example web app's image.
pub const HELLO_IMAGE: &str = "cairn-example/hello:1";

const INDEX: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Hello from Cairn</title>
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1b1b1b}
h1{color:#2f5d50}</style></head>
<body><h1>Hello from Cairn</h1>
<p>This page is served by your own container, started from the <code>hello</code> blueprint.</p>
</body></html>
"#;

/// Builds the root file system of the hello image as a tar archive: Debian's static
/// busybox, the few applets the image uses, and a page to serve.
pub fn hello_rootfs(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let add_dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_cksum();
        tar.append_data(&mut h, path, std::io::empty())
    };
    for d in ["bin", "etc", "www", "proc", "sys", "dev"] {
        add_dir(&mut tar, d, 0o755)?;
    }
    add_dir(&mut tar, "tmp", 0o1777)?;
    let file = |tar: &mut tar::Builder<Vec<u8>>,
                path: &str,
                data: &[u8],
                mode: u32|
     -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        tar.append_data(&mut h, path, data)
    };
    file(&mut tar, "bin/busybox", busybox, 0o755)?;
    file(&mut tar, "www/index.html", INDEX.as_bytes(), 0o644)?;
    file(
        &mut tar,
        "etc/passwd",
        b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    )?;
    file(
        &mut tar,
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\n",
        0o644,
    )?;
    for applet in [
        "sh", "httpd", "echo", "cat", "ls", "mkdir", "sleep", "wget", "env", "id",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let mut out = tar.into_inner()?;
    out.flush()?;
    Ok(out)
}

/// Makes sure the hello image exists; builds it from `/bin/busybox` (Debian's
/// `busybox-static`) if not. Returns a note for the operator when it cannot.
pub async fn ensure_hello_image(docker: &Docker) -> Result<(), String> {
    if docker.inspect_image(HELLO_IMAGE).await.is_ok() {
        return Ok(());
    }
    let busybox = std::fs::read("/bin/busybox").map_err(|e| {
        format!("cannot build the example image: /bin/busybox: {e} (install busybox-static)")
    })?;
    let rootfs =
        hello_rootfs(&busybox).map_err(|e| format!("cannot build the example image: {e}"))?;
    let (repo, tag) = HELLO_IMAGE
        .split_once(':')
        .unwrap_or((HELLO_IMAGE, "latest"));
    let opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        changes: vec![r#"CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]"#.into()],
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(opts), Some(bollard::body_full(rootfs.into())), None);
    while let Some(item) = stream.next().await {
        item.map_err(|e| format!("importing the example image: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_has_the_pieces_the_image_needs() {
        let tar_bytes = hello_rootfs(b"\x7fELF fake busybox").unwrap();
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        for want in [
            "bin/busybox",
            "bin/sh",
            "bin/httpd",
            "www/index.html",
            "etc/passwd",
            "tmp",
        ] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == want),
                "{want} missing from {names:?}"
            );
        }
    }
}
