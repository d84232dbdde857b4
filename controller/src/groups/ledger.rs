//! What ended runs spent, folded per group and member.
//!
//! Ended instances leave the controller's memory at once (they stay in the store
//! for `keep_ended_days`), but the credits they spent still count against their
//! group's and member's quotas, and usage reports still show them. Each ended run
//! is added here as it leaves memory: memory then grows with the people in groups,
//! not with every launch ever made. Pure bookkeeping, no I/O.

use std::collections::{BTreeSet, HashMap};

/// Credits spent and launches made by ended runs.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Spent {
    pub credits: f64,
    pub launches: u32,
}

impl Spent {
    fn add(&mut self, other: Spent) {
        self.credits += other.credits;
        self.launches += other.launches;
    }
}

/// Ended runs by group, then by member.
#[derive(Debug, Default)]
pub struct Ledger {
    by_group: HashMap<String, HashMap<String, Spent>>,
}

impl Ledger {
    /// One ended run of `user` in `group` that spent `credits`.
    pub fn add(&mut self, group: &str, user: &str, credits: f64) {
        self.by_group
            .entry(group.to_string())
            .or_default()
            .entry(user.to_string())
            .or_default()
            .add(Spent {
                credits,
                launches: 1,
            });
    }

    /// Takes back a run [`Ledger::add`] counted (it was deleted for good).
    pub fn remove(&mut self, group: &str, user: &str, credits: f64) {
        let Some(members) = self.by_group.get_mut(group) else {
            return;
        };
        if let Some(s) = members.get_mut(user) {
            s.credits = (s.credits - credits).max(0.0);
            s.launches = s.launches.saturating_sub(1);
            if s.launches == 0 {
                members.remove(user);
            }
        }
        if members.is_empty() {
            self.by_group.remove(group);
        }
    }

    /// What `user`'s ended runs in `group` spent.
    pub fn of(&self, group: &str, user: &str) -> Spent {
        self.by_group
            .get(group)
            .and_then(|m| m.get(user))
            .copied()
            .unwrap_or_default()
    }

    /// What every ended run in `group` spent.
    pub fn group_total(&self, group: &str) -> Spent {
        let mut total = Spent::default();
        for s in self
            .by_group
            .get(group)
            .into_iter()
            .flat_map(|m| m.values())
        {
            total.add(*s);
        }
        total
    }

    /// The members of `group` with ended runs, and what each spent.
    pub fn members(&self, group: &str) -> Vec<(String, Spent)> {
        self.by_group
            .get(group)
            .map(|m| m.iter().map(|(u, s)| (u.clone(), *s)).collect())
            .unwrap_or_default()
    }

    /// The groups `user` has ended runs in.
    pub fn groups_of(&self, user: &str) -> BTreeSet<String> {
        self.by_group
            .iter()
            .filter(|(_, m)| m.contains_key(user))
            .map(|(g, _)| g.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_add_up_per_member_and_per_group_and_can_be_taken_back() {
        let mut l = Ledger::default();
        l.add("bio", "ann", 1.5);
        l.add("bio", "ann", 0.5);
        l.add("bio", "bob", 1.0);
        l.add("chem", "ann", 4.0);
        assert_eq!(
            l.of("bio", "ann"),
            Spent {
                credits: 2.0,
                launches: 2
            }
        );
        assert_eq!(
            l.group_total("bio"),
            Spent {
                credits: 3.0,
                launches: 3
            }
        );
        assert_eq!(l.of("bio", "carl"), Spent::default());
        assert_eq!(
            l.groups_of("ann").into_iter().collect::<Vec<_>>(),
            vec!["bio", "chem"]
        );
        let mut members = l.members("bio");
        members.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(members[0].0, "ann");
        assert_eq!(members[1].0, "bob");
        // Deleted for good: counted no more; the last one takes its member and
        // group with it.
        l.remove("chem", "ann", 4.0);
        assert!(l.groups_of("ann").contains("bio"));
        assert!(!l.groups_of("ann").contains("chem"));
        assert!(l.members("chem").is_empty());
        l.remove("bio", "bob", 1.0);
        l.remove("bio", "nobody", 1.0);
        l.remove("none", "ann", 1.0);
        assert_eq!(
            l.group_total("bio"),
            Spent {
                credits: 2.0,
                launches: 2
            }
        );
    }
}
