//! Host facts and capacity from sysinfo: names and versions, CPUs, memory, load, and
//! the file systems that hold Docker's data root and the agent's state directory.
//!
//! Kept cheap because [`SystemProbe::capacity`] runs every heartbeat on an agent meant
//! to idle under 0.5% of a core: no process scan, only memory is refreshed, the mount
//! list (`/proc/mounts`) is re-read once a minute, and between those only the one or two
//! file systems actually reported get a `statvfs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_shared::resources::{Capacity, DiskUsage, HostFacts};
use sysinfo::{
    CpuRefreshKind, Disk, DiskRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System,
};

use super::clip;

/// How long a mount list is trusted; mounts change rarely, and a new one only matters
/// if the state directory or Docker's data root moved onto it.
const MOUNT_LIST_TTL: Duration = Duration::from_secs(60);

/// Static facts of this host, cut to the shared bounds.
pub fn static_facts(labels: BTreeMap<String, String>) -> HostFacts {
    let os = match (System::name(), System::os_version()) {
        (Some(name), Some(version)) => format!("{name} {version}"),
        (Some(name), None) => name,
        _ => System::long_os_version().unwrap_or_else(|| std::env::consts::OS.to_owned()),
    };
    HostFacts {
        hostname: clip(&System::host_name().unwrap_or_default(), 253),
        os: clip(&os, 512),
        kernel: clip(&System::kernel_version().unwrap_or_default(), 512),
        arch: clip(&System::cpu_arch(), 64),
        agent_version: clip(env!("CARGO_PKG_VERSION"), 64),
        labels,
    }
}

struct Inner {
    system: System,
    disks: Disks,
    mounts_listed: Instant,
}

/// Reads capacity; holds sysinfo's buffers between heartbeats so they are not
/// reallocated every time.
pub struct SystemProbe {
    state_dir: PathBuf,
    cpus: u32,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for SystemProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemProbe")
            .field("state_dir", &self.state_dir)
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

fn storage() -> DiskRefreshKind {
    DiskRefreshKind::nothing().with_storage()
}

impl SystemProbe {
    /// `state_dir` is canonicalised once here, so a symlinked state directory is
    /// matched against the mount it really lives on.
    pub fn new(state_dir: PathBuf) -> Self {
        // The CPU list is read once: hot-plugging CPUs into a running host is rare
        // enough that a restart of the agent may pick it up.
        let system =
            System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()));
        let cpus = u32::try_from(system.cpus().len())
            .unwrap_or(u32::MAX)
            .max(1);
        let disks = Disks::new_with_refreshed_list_specifics(storage());
        let state_dir = std::fs::canonicalize(&state_dir).unwrap_or(state_dir);
        SystemProbe {
            state_dir,
            cpus,
            inner: Mutex::new(Inner {
                system,
                disks,
                mounts_listed: Instant::now(),
            }),
        }
    }

    /// Capacity now; `docker_root` is Docker's data root if known, already resolved
    /// to a real path.
    pub fn capacity(&self, docker_root: Option<&Path>) -> Capacity {
        // A panic elsewhere while holding the lock leaves only stale numbers behind,
        // which the next refresh overwrites.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *inner;
        inner
            .system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let fresh_list = inner.mounts_listed.elapsed() > MOUNT_LIST_TTL;
        if fresh_list {
            // Re-reads /proc/mounts and the space of every listed file system.
            inner.disks.refresh_specifics(true, storage());
            inner.mounts_listed = Instant::now();
        }

        let state = longest_mount(
            inner.disks.list().iter().map(Disk::mount_point),
            &self.state_dir,
        );
        let docker = docker_root
            .and_then(|p| longest_mount(inner.disks.list().iter().map(Disk::mount_point), p));
        let mut usage = |index: Option<usize>| {
            let disk = inner.disks.list_mut().get_mut(index?)?;
            if !fresh_list {
                disk.refresh_specifics(storage());
            }
            let total = disk.total_space();
            Some(DiskUsage {
                total_bytes: total,
                free_bytes: disk.available_space().min(total),
            })
        };
        let state_disk = usage(state);
        // Usually the same file system as the state directory; one statvfs is enough.
        let docker_disk = if docker == state {
            state_disk
        } else {
            usage(docker)
        };

        let load = System::load_average();
        let clean = |x: f64| if x.is_finite() && x >= 0.0 { x } else { 0.0 };
        let total = inner.system.total_memory();
        Capacity {
            cpus: self.cpus,
            memory_total_bytes: total,
            // The shared bounds reject available > total; sysinfo can briefly report
            // that from cgroup-limited views.
            memory_available_bytes: inner.system.available_memory().min(total),
            load_average: [clean(load.one), clean(load.five), clean(load.fifteen)],
            docker_disk,
            state_disk,
        }
    }
}

/// Space of the file system that holds `path` (already a real path), read fresh:
/// the mount list and a `statvfs`, the same way [`SystemProbe::capacity`] reports
/// `docker_disk`. Blocking; for callers that ask rarely (image garbage collection,
/// once a minute) and must not act on a cached figure.
pub fn disk_usage_at(path: &Path) -> Option<DiskUsage> {
    let disks = Disks::new_with_refreshed_list_specifics(storage());
    let disk = disks.list().get(longest_mount(
        disks.list().iter().map(Disk::mount_point),
        path,
    )?)?;
    let total = disk.total_space();
    Some(DiskUsage {
        total_bytes: total,
        free_bytes: disk.available_space().min(total),
    })
}

/// The index of the mount point that holds `path`: the longest mount point that is a
/// prefix of it, compared by path components (so `/var/lib` does not hold
/// `/var/libx`).
pub fn longest_mount<'a>(
    mount_points: impl IntoIterator<Item = &'a Path>,
    path: &Path,
) -> Option<usize> {
    mount_points
        .into_iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(m))
        // Ties (the same mount point listed twice, as with bind mounts of one file
        // system) go to the later entry, which is the one mounted on top.
        .max_by_key(|(_, m)| m.components().count())
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_shared::validate::Validate;

    fn pick(mounts: &[&str], path: &str) -> Option<usize> {
        longest_mount(mounts.iter().map(Path::new), Path::new(path))
    }

    #[test]
    fn picks_the_longest_mount_prefix() {
        let mounts = ["/", "/var", "/var/lib/docker"];
        assert_eq!(pick(&mounts, "/var/lib/docker"), Some(2));
        assert_eq!(pick(&mounts, "/var/lib/docker/overlay2/x"), Some(2));
        assert_eq!(pick(&mounts, "/var/lib/cairn-agent"), Some(1));
        assert_eq!(pick(&mounts, "/home/x"), Some(0));
        assert_eq!(pick(&mounts, "/"), Some(0));
        // Components, not bytes: /var/libx is not under /var/lib.
        assert_eq!(pick(&["/", "/var/lib"], "/var/libx"), Some(0));
        // Order does not matter; the later of two equal mount points wins.
        assert_eq!(pick(&["/var", "/"], "/var/x"), Some(0));
        assert_eq!(pick(&["/", "/data", "/data"], "/data/x"), Some(2));
        assert_eq!(pick(&[], "/"), None);
        assert_eq!(pick(&["/data"], "/home"), None);
    }

    #[test]
    fn reads_this_host() {
        let p = SystemProbe::new(std::env::temp_dir());
        for docker_root in [None, Some(Path::new("/"))] {
            let c = p.capacity(docker_root);
            assert!(c.cpus >= 1 && c.memory_total_bytes > 0, "{c:?}");
            assert!(c.state_disk.is_some_and(|d| d.total_bytes > 0), "{c:?}");
            assert_eq!(c.docker_disk.is_some(), docker_root.is_some(), "{c:?}");
            c.validate().unwrap();
        }
    }

    #[test]
    fn disk_usage_at_matches_the_probe() {
        let d = disk_usage_at(Path::new("/")).unwrap();
        assert!(d.total_bytes > 0 && d.free_bytes <= d.total_bytes, "{d:?}");
    }

    #[test]
    fn static_facts_fit_the_bounds() {
        let f = static_facts([("zone".to_string(), "a".to_string())].into());
        assert!(!f.arch.is_empty() && !f.os.is_empty());
        assert_eq!(f.agent_version, env!("CARGO_PKG_VERSION"));
        f.validate().unwrap();
    }
}
