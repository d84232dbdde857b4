//! The reconcile planner: desired instances + observed containers → actions.
//!
//! Pure and deterministic, like a protocol state machine: no Docker, no clock. The
//! supervisor feeds it what it knows and executes what it returns; running it twice on
//! the same input gives the same plan, so the loop is safe to repeat.

use std::collections::{BTreeMap, BTreeSet};

use cairn_shared::ids::InstanceId;
use cairn_shared::workload::{DesiredInstance, InstancePhase};

/// What the runtime says about one Cairn-labelled container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub container_id: String,
    pub state: ContainerState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Created or restarting: not running yet.
    Created,
    Running,
    Exited {
        exit_code: i64,
        oom_killed: bool,
    },
}

/// One step for the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start a container for this instance.
    Create(Box<DesiredInstance>),
    /// Start watching a running container until its app answers.
    Probe(InstanceId),
    /// Stop and remove a container that is not desired (stopped or orphaned).
    Remove {
        instance: InstanceId,
        container_id: String,
    },
    /// Tell the controller.
    Report(InstanceId, InstancePhase),
}

/// What the supervisor remembers between passes.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    /// Instances with a create or probe under way.
    pub busy: BTreeSet<InstanceId>,
    /// The last phase reported per instance, so nothing is reported twice.
    pub reported: BTreeMap<InstanceId, InstancePhase>,
}

/// Plans one pass.
pub fn plan(
    desired: &BTreeMap<InstanceId, DesiredInstance>,
    observed: &BTreeMap<InstanceId, Observed>,
    memory: &Memory,
) -> Vec<Action> {
    let mut actions = vec![];
    let mut report = |id: &InstanceId, phase: InstancePhase| {
        if memory.reported.get(id) != Some(&phase) {
            actions.push(Action::Report(id.clone(), phase));
        }
    };
    let mut work = vec![];
    for (id, d) in desired {
        if memory.busy.contains(id) {
            continue;
        }
        match observed.get(id).map(|o| &o.state) {
            None if d.expect_existing => report(id, InstancePhase::Missing),
            None => {
                // A Failed report is final until the controller removes the instance.
                if !matches!(
                    memory.reported.get(id),
                    Some(InstancePhase::Failed { .. }) | Some(InstancePhase::Missing)
                ) {
                    work.push(Action::Create(Box::new(d.clone())));
                }
            }
            Some(ContainerState::Created) => {}
            Some(ContainerState::Running) => {
                if !matches!(
                    memory.reported.get(id),
                    Some(InstancePhase::Running { .. }) | Some(InstancePhase::Failed { .. })
                ) {
                    work.push(Action::Probe(id.clone()));
                }
            }
            Some(ContainerState::Exited {
                exit_code,
                oom_killed,
            }) => report(
                id,
                InstancePhase::Exited {
                    exit_code: *exit_code,
                    oom_killed: *oom_killed,
                },
            ),
        }
    }
    for (id, o) in observed {
        if !desired.contains_key(id) && !memory.busy.contains(id) {
            work.push(Action::Remove {
                instance: id.clone(),
                container_id: o.container_id.clone(),
            });
        }
    }
    // Instances no longer desired and already gone: say so once.
    for (id, last) in &memory.reported {
        if !desired.contains_key(id)
            && !observed.contains_key(id)
            && !memory.busy.contains(id)
            && *last != InstancePhase::Removed
        {
            actions.push(Action::Report(id.clone(), InstancePhase::Removed));
        }
    }
    actions.extend(work);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_shared::workload::Probe;

    fn want(id: &InstanceId, existing: bool) -> DesiredInstance {
        DesiredInstance {
            id: id.clone(),
            owner: "alice".into(),
            blueprint: "b".into(),
            revision: 1,
            image: "img".into(),
            image_source: cairn_shared::images::ImageSource::Host,
            command: None,
            env: vec![],
            memory_bytes: 64 << 20,
            nano_cpus: 1_000_000_000,
            app_port: 8080,
            probe: Probe::Tcp,
            start_timeout_ms: 1000,
            expect_existing: existing,
            datasets: vec![],
            volume: None,
        }
    }

    fn obs(state: ContainerState) -> Observed {
        Observed {
            container_id: "c1".into(),
            state,
        }
    }

    #[test]
    fn new_instances_are_created_once() {
        let id = InstanceId::generate();
        let desired = BTreeMap::from([(id.clone(), want(&id, false))]);
        let mut mem = Memory::default();
        assert_eq!(
            plan(&desired, &BTreeMap::new(), &mem),
            vec![Action::Create(Box::new(want(&id, false)))]
        );
        mem.busy.insert(id.clone());
        assert_eq!(plan(&desired, &BTreeMap::new(), &mem), vec![]);
    }

    #[test]
    fn running_containers_are_probed_then_left_alone() {
        let id = InstanceId::generate();
        let desired = BTreeMap::from([(id.clone(), want(&id, false))]);
        let observed = BTreeMap::from([(id.clone(), obs(ContainerState::Running))]);
        let mut mem = Memory::default();
        assert_eq!(
            plan(&desired, &observed, &mem),
            vec![Action::Probe(id.clone())]
        );
        mem.reported.insert(
            id.clone(),
            InstancePhase::Running {
                address: "x".into(),
            },
        );
        assert_eq!(plan(&desired, &observed, &mem), vec![]);
    }

    #[test]
    fn adopted_containers_are_not_duplicated_and_vanished_ones_reported() {
        let (a, b) = (InstanceId::generate(), InstanceId::generate());
        let desired = BTreeMap::from([(a.clone(), want(&a, true)), (b.clone(), want(&b, true))]);
        let observed = BTreeMap::from([(a.clone(), obs(ContainerState::Running))]);
        let p = plan(&desired, &observed, &Memory::default());
        assert!(p.contains(&Action::Report(b.clone(), InstancePhase::Missing)));
        assert!(p.contains(&Action::Probe(a.clone())));
        assert!(!p.iter().any(|x| matches!(x, Action::Create(_))));
    }

    #[test]
    fn undesired_containers_are_removed_and_reported_gone_once() {
        let id = InstanceId::generate();
        let observed = BTreeMap::from([(id.clone(), obs(ContainerState::Running))]);
        let mut mem = Memory::default();
        mem.reported.insert(
            id.clone(),
            InstancePhase::Running {
                address: "x".into(),
            },
        );
        assert_eq!(
            plan(&BTreeMap::new(), &observed, &mem),
            vec![Action::Remove {
                instance: id.clone(),
                container_id: "c1".into()
            }]
        );
        assert_eq!(
            plan(&BTreeMap::new(), &BTreeMap::new(), &mem),
            vec![Action::Report(id.clone(), InstancePhase::Removed)]
        );
        mem.reported.insert(id.clone(), InstancePhase::Removed);
        assert_eq!(plan(&BTreeMap::new(), &BTreeMap::new(), &mem), vec![]);
    }

    #[test]
    fn exits_are_reported_with_code_and_oom() {
        let id = InstanceId::generate();
        let desired = BTreeMap::from([(id.clone(), want(&id, true))]);
        let observed = BTreeMap::from([(
            id.clone(),
            obs(ContainerState::Exited {
                exit_code: 137,
                oom_killed: true,
            }),
        )]);
        assert_eq!(
            plan(&desired, &observed, &Memory::default()),
            vec![Action::Report(
                id.clone(),
                InstancePhase::Exited {
                    exit_code: 137,
                    oom_killed: true
                }
            )]
        );
    }

    #[test]
    fn failed_instances_are_not_retried() {
        let id = InstanceId::generate();
        let desired = BTreeMap::from([(id.clone(), want(&id, false))]);
        let mut mem = Memory::default();
        mem.reported.insert(
            id.clone(),
            InstancePhase::Failed {
                reason: "no such image".into(),
            },
        );
        assert_eq!(plan(&desired, &BTreeMap::new(), &mem), vec![]);
    }
}
