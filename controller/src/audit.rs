//! The audit log: who did what to whom, when and from where, for admin, manager
//! and login actions. Appended to the store's `audit` tree under a time-ordered key
//! and read newest first by admins. An entry that cannot be written is logged as
//! an error but does not undo the action it records (the action already happened).

use std::sync::atomic::{AtomicU64, Ordering};

pub use cairn_api::groups::AuditEntry;

use crate::store::{Store, StoreError, Tree};

/// The most entries one read returns.
pub const MAX_READ: usize = 1000;

#[derive(Debug)]
pub struct Audit {
    store: Store,
    /// Orders entries written in the same millisecond.
    seq: AtomicU64,
}

impl Audit {
    pub fn new(store: Store) -> Self {
        Audit {
            store,
            seq: AtomicU64::new(0),
        }
    }

    pub fn record(&self, entry: AuditEntry) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let key = format!("{:020}-{:010}", entry.at_ms, seq % 10_000_000_000);
        tracing::info!(target: "audit", actor = %entry.actor, action = %entry.action, target_ = %entry.target, from = ?entry.from, detail = %entry.detail, "audit");
        if let Err(e) = self.store.put(Tree::Audit, &key, &entry) {
            tracing::error!(error = %e, action = %entry.action, "could not write an audit entry");
        }
    }

    /// The newest `n` entries (at most [`MAX_READ`]), newest first.
    pub fn recent(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.store.last(Tree::Audit, n.min(MAX_READ))
    }
}
