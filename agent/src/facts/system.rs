//! Host capacity from sysinfo: CPUs, memory, load, and the disks that hold Docker's
//! data root and the agent's state directory.
//!
//! Kept cheap because it runs every heartbeat on an agent meant to idle under 0.5% of
//! a core: no process scan, memory refreshed alone, the disk list re-read once a
//! minute and only the space figures in between.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_shared::resources::{Capacity, DiskUsage, HostFacts};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

const DISK_LIST_TTL: Duration = Duration::from_secs(60);

/// Static facts of this host.
pub fn static_facts(labels: BTreeMap<String, String>) -> HostFacts {
    let clip = |s: String, n: usize| s.chars().take(n).collect::<String>();
    HostFacts {
        hostname: clip(System::host_name().unwrap_or_default(), 253),
        os: clip(System::long_os_version().unwrap_or_default(), 256),
        kernel: clip(System::kernel_version().unwrap_or_default(), 256),
        arch: clip(System::cpu_arch(), 64),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        labels,
    }
}

struct Inner {
    system: System,
    disks: Disks,
    disks_listed: Instant,
}

/// Reads capacity; holds sysinfo's buffers between heartbeats.
pub struct SystemProbe {
    state_dir: PathBuf,
    cpus: u32,
    inner: Mutex<Inner>,
}

impl SystemProbe {
    pub fn new(state_dir: PathBuf) -> Self {
        let system =
            System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()));
        let cpus = system.cpus().len().max(1) as u32;
        let disks =
            Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage());
        let state_dir = std::fs::canonicalize(&state_dir).unwrap_or(state_dir);
        SystemProbe {
            state_dir,
            cpus,
            inner: Mutex::new(Inner {
                system,
                disks,
                disks_listed: Instant::now(),
            }),
        }
    }

    /// Capacity now; `docker_root` is Docker's data root if known.
    pub fn capacity(&self, docker_root: Option<&Path>) -> Capacity {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        if inner.disks_listed.elapsed() > DISK_LIST_TTL {
            inner
                .disks
                .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
            inner.disks_listed = Instant::now();
        } else {
            inner
                .disks
                .refresh_specifics(false, DiskRefreshKind::nothing().with_storage());
        }
        let mounts: Vec<(PathBuf, DiskUsage)> = inner
            .disks
            .list()
            .iter()
            .map(|d| {
                let total = d.total_space();
                (
                    d.mount_point().to_path_buf(),
                    DiskUsage {
                        total_bytes: total,
                        free_bytes: d.available_space().min(total),
                    },
                )
            })
            .collect();
        let load = System::load_average();
        let total = inner.system.total_memory();
        let clean = |x: f64| if x.is_finite() && x >= 0.0 { x } else { 0.0 };
        Capacity {
            cpus: self.cpus,
            memory_total_bytes: total,
            memory_available_bytes: inner.system.available_memory().min(total),
            load_average: [clean(load.one), clean(load.five), clean(load.fifteen)],
            docker_disk: docker_root.and_then(|p| disk_for(&mounts, p)),
            state_disk: disk_for(&mounts, &self.state_dir),
        }
    }
}

/// The usage of the file system mounted at the longest mount point that is a prefix
/// of `path` (the file system that holds `path`).
pub fn disk_for(mounts: &[(PathBuf, DiskUsage)], path: &Path) -> Option<DiskUsage> {
    mounts
        .iter()
        .filter(|(m, _)| path.starts_with(m))
        .max_by_key(|(m, _)| m.components().count())
        .map(|(_, u)| *u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(t: u64) -> DiskUsage {
        DiskUsage {
            total_bytes: t,
            free_bytes: t / 2,
        }
    }

    #[test]
    fn picks_the_longest_mount_prefix() {
        let mounts = vec![
            (PathBuf::from("/"), u(1)),
            (PathBuf::from("/var"), u(2)),
            (PathBuf::from("/var/lib/docker"), u(3)),
        ];
        assert_eq!(disk_for(&mounts, Path::new("/var/lib/docker")), Some(u(3)));
        assert_eq!(
            disk_for(&mounts, Path::new("/var/lib/cairn-agent")),
            Some(u(2))
        );
        assert_eq!(disk_for(&mounts, Path::new("/home/x")), Some(u(1)));
        // Path::starts_with compares components: /var/libx is not under /var/lib.
        let mounts = vec![
            (PathBuf::from("/"), u(1)),
            (PathBuf::from("/var/lib"), u(4)),
        ];
        assert_eq!(disk_for(&mounts, Path::new("/var/libx")), Some(u(1)));
        assert_eq!(disk_for(&[], Path::new("/")), None);
    }

    #[test]
    fn reads_this_host() {
        use cairn_shared::validate::Validate;
        let tmp = std::env::temp_dir();
        let p = SystemProbe::new(tmp);
        let c = p.capacity(Some(Path::new("/")));
        assert!(c.cpus >= 1 && c.memory_total_bytes > 0);
        assert!(c.state_disk.is_some_and(|d| d.total_bytes > 0));
        c.validate().unwrap();
        static_facts(Default::default()).validate().unwrap();
    }
}
