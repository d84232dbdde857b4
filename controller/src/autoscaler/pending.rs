//! Hosts asked of a provider that have not joined yet. They count as coming, so a
//! pass does not ask again for what the last one asked; an ask stops counting once
//! the pool has grown by that many hosts, or after [`ASK_EXPIRES_MS`] (a create that
//! never produced a host must not block the next one forever). Pure: fed the pool's
//! size and `now`.

/// How long an unanswered ask counts as coming.
pub const ASK_EXPIRES_MS: u64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ask {
    at_ms: u64,
    count: u32,
    /// The pool's size when asked.
    hosts_then: u32,
}

/// One pool's outstanding asks.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    asks: Vec<Ask>,
}

impl Pending {
    /// Records that `count` hosts were asked for while the pool had `hosts`.
    pub fn asked(&mut self, count: u32, hosts: u32, now_ms: u64) {
        self.asks.push(Ask {
            at_ms: now_ms,
            count,
            hosts_then: hosts,
        });
    }

    /// How many asked-for hosts are still coming, now that the pool has `hosts`.
    /// Hosts that joined answer the oldest asks first.
    pub fn coming(&mut self, hosts: u32, now_ms: u64) -> u32 {
        self.asks
            .retain(|a| now_ms.saturating_sub(a.at_ms) < ASK_EXPIRES_MS);
        // Joined hosts credited to older asks in this pass.
        let mut used = 0u32;
        let mut kept = vec![];
        for a in &self.asks {
            let joined = hosts.saturating_sub(a.hosts_then).saturating_sub(used);
            let credit = joined.min(a.count);
            used += credit;
            if a.count > credit {
                kept.push(Ask {
                    count: a.count - credit,
                    // What is credited now is not credited again next time.
                    hosts_then: a.hosts_then.saturating_add(used),
                    ..*a
                });
            }
        }
        self.asks = kept;
        self.asks.iter().map(|a| a.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_count_until_hosts_join_or_they_expire() {
        let mut p = Pending::default();
        assert_eq!(p.coming(3, 0), 0);
        p.asked(2, 3, 1_000);
        assert_eq!(p.coming(3, 2_000), 2);
        // One host joined.
        assert_eq!(p.coming(4, 3_000), 1);
        // Both joined: nothing is coming any more, even if one leaves later.
        assert_eq!(p.coming(5, 4_000), 0);
        assert_eq!(p.coming(4, 5_000), 0);
        // An ask nobody answered stops counting after the expiry.
        p.asked(3, 4, 10_000);
        assert_eq!(p.coming(4, 10_000 + ASK_EXPIRES_MS - 1), 3);
        assert_eq!(p.coming(4, 10_000 + ASK_EXPIRES_MS), 0);
    }

    #[test]
    fn joined_hosts_answer_the_oldest_ask_first() {
        let mut p = Pending::default();
        p.asked(1, 0, 0);
        p.asked(2, 0, 10);
        assert_eq!(p.coming(0, 20), 3);
        assert_eq!(p.coming(2, 30), 1);
        assert_eq!(p.coming(3, 40), 0);
    }
}
