//! What the bytes benchmarks (`datasets`, `chunk-sizes`, `volumes`) share: loopback
//! byte counts, flushing before a measured step, deterministic incompressible
//! files, and an rsync daemon on loopback to compare with.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Bytes of the loopback interface's transmit counter.
pub fn lo_tx_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/dev")?;
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("lo:") {
            // Receive: bytes packets errs drop fifo frame compressed multicast;
            // then transmit: bytes …
            let fields: Vec<&str> = rest.split_whitespace().collect();
            return fields
                .get(8)
                .and_then(|f| f.parse().ok())
                .context("parsing lo in /proc/net/dev");
        }
    }
    bail!("no lo interface in /proc/net/dev")
}

/// A timed, byte-counted step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Step {
    pub secs: f64,
    pub wire: u64,
}

/// Flushes every filesystem, so each measured step starts with no dirty pages left
/// by the one before (writing back gigabytes of another tool's data would otherwise
/// be charged to whoever runs next).
pub fn settle() -> Result<()> {
    let st = Command::new("sync").status().context("running sync")?;
    if !st.success() {
        bail!("sync failed: {st}");
    }
    Ok(())
}

pub fn measure<T>(f: impl FnOnce() -> Result<T>) -> Result<(Step, T)> {
    settle()?;
    let before = lo_tx_bytes()?;
    let t0 = Instant::now();
    let out = f()?;
    let secs = t0.elapsed().as_secs_f64();
    let wire = lo_tx_bytes()?.saturating_sub(before);
    Ok((Step { secs, wire }, out))
}

pub async fn measure_async<T, F: std::future::Future<Output = Result<T>>>(
    f: F,
) -> Result<(Step, T)> {
    settle()?;
    let before = lo_tx_bytes()?;
    let t0 = Instant::now();
    let out = f.await?;
    let secs = t0.elapsed().as_secs_f64();
    let wire = lo_tx_bytes()?.saturating_sub(before);
    Ok((Step { secs, wire }, out))
}

/// Deterministic incompressible bytes for file `seed`.
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

pub fn write_file(path: &Path, seed: &str, len: u64) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let mut left = len;
    let mut part = 0u64;
    while left > 0 {
        let n = left.min(64 << 20);
        f.write_all(&noise(&format!("{seed}/{part}"), n as usize))?;
        left -= n;
        part += 1;
    }
    Ok(())
}

/// An rsync daemon on loopback serving one writable module.
pub struct RsyncDaemon {
    child: std::process::Child,
    port: u16,
}

impl RsyncDaemon {
    pub fn start(dir: &Path) -> Result<Self> {
        let module = dir.join("module");
        std::fs::create_dir_all(&module)?;
        let port = cairn_tests::cluster::free_tcp_port();
        let conf = dir.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nport = {port}\naddress = 127.0.0.1\npid file = {}\n\
                 [bench]\npath = {}\nread only = no\nuid = root\ngid = root\n",
                dir.join("rsyncd.pid").display(),
                module.display()
            ),
        )?;
        let child = Command::new("rsync")
            .args(["--daemon", "--no-detach", "--config"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting `rsync --daemon` (apt-get install rsync)")?;
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("rsync daemon did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RsyncDaemon { child, port })
    }

    pub fn url(&self, name: &str) -> String {
        format!("rsync://127.0.0.1:{}/bench/{name}/", self.port)
    }

    /// The daemon's process id (the one that forks a process per connection).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rsync(from: &str, to: &str) -> Result<()> {
    rsync_with(&["-a"], from, to)
}

pub fn rsync_with(args: &[&str], from: &str, to: &str) -> Result<()> {
    let out = Command::new("rsync")
        .args(args)
        .args([from, to])
        .output()
        .context("running rsync")?;
    if !out.status.success() {
        bail!(
            "rsync {from} {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
