//! Login throttling: how long a login attempt must wait after failed ones. Pure and
//! clock-free — fed `now_ms`, it answers from its own counts, so every rule is
//! tested without waiting; [`LoginThrottle`] is the shared, locked handle the
//! controller keeps.
//!
//! Failures are counted per account and per client address (an IPv6 client by its
//! /64, which one machine usually holds whole):
//!
//! * After [`Policy::free_failures`] failures every further attempt waits a delay
//!   that doubles with each failure, from [`Policy::base_delay_ms`] up to
//!   [`Policy::max_delay_ms`], counted from the last failure.
//! * After [`Policy::lockout_failures`] failures an account is locked for
//!   [`Policy::lockout_ms`]. Addresses are only slowed, never locked: a classroom
//!   behind one NAT address must not be shut out by one student's typos.
//! * A success clears the account's count (not the address's: an attacker holding
//!   one valid account must not reset their address by logging in between guesses).
//! * Counts untouched for [`Policy::forget_after_ms`] are forgotten.
//! * Each table holds at most [`Policy::max_entries`] records; when full, forgotten
//!   records go first, then the oldest unlocked one, so flooding the table with
//!   fresh names does not lift a lock-out early.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

/// The throttle's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures of an account before its attempts are delayed.
    pub free_failures: u32,
    /// Failures from an address before its attempts are delayed.
    pub address_free_failures: u32,
    /// The first delay; each further failure doubles it.
    pub base_delay_ms: u64,
    /// The longest delay.
    pub max_delay_ms: u64,
    /// Failures after which an account is locked.
    pub lockout_failures: u32,
    /// How long a lock-out lasts.
    pub lockout_ms: u64,
    /// A count with no failure for this long is forgotten.
    pub forget_after_ms: u64,
    /// Most records per table (accounts, addresses).
    pub max_entries: usize,
}

impl Default for Policy {
    /// Three free tries per account, then 1 s, 2 s, 4 s … up to 30 s; locked for
    /// 15 minutes at the tenth failure. Ten free tries per address.
    fn default() -> Self {
        Policy {
            free_failures: 3,
            address_free_failures: 10,
            base_delay_ms: 1_000,
            max_delay_ms: 30_000,
            lockout_failures: 10,
            lockout_ms: 15 * 60_000,
            forget_after_ms: 3_600_000,
            max_entries: 10_000,
        }
    }
}

/// What an attempt is held back by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Account,
    Address,
}

/// Why an attempt may not proceed now. `Display` is the message for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct Throttled {
    pub scope: Scope,
    /// How long until an attempt is accepted again.
    pub retry_after_ms: u64,
    /// The account is locked out (not merely slowed down).
    pub locked: bool,
}

impl Throttled {
    /// Whole seconds to wait, rounded up (for a `Retry-After` header).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms.div_ceil(1000)
    }
}

impl std::fmt::Display for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wait = Wait(self.retry_after_secs());
        match (self.scope, self.locked) {
            (Scope::Account, true) => write!(
                f,
                "this account is locked after too many failed logins; try again in {wait} or ask an admin to unlock it"
            ),
            (Scope::Account, false) => {
                write!(f, "too many failed logins for this account; try again in {wait}")
            }
            (Scope::Address, _) => {
                write!(f, "too many failed logins from your address; try again in {wait}")
            }
        }
    }
}

/// A wait in words: seconds below two minutes, whole minutes (rounded up) above.
struct Wait(u64);

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 < 120 {
            write!(f, "{} s", self.0.max(1))
        } else {
            write!(f, "{} min", self.0.div_ceil(60))
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure_ms: u64,
    locked_until_ms: Option<u64>,
}

impl Record {
    fn fresh(now_ms: u64) -> Self {
        Record {
            failures: 0,
            last_failure_ms: now_ms,
            locked_until_ms: None,
        }
    }

    fn locked_at(&self, now_ms: u64) -> bool {
        self.locked_until_ms.is_some_and(|t| now_ms < t)
    }
}

/// Failure counts under one key type, bounded.
#[derive(Debug)]
struct Table<K> {
    records: HashMap<K, Record>,
}

impl<K: Eq + Hash + Clone> Table<K> {
    fn new() -> Self {
        Table {
            records: HashMap::new(),
        }
    }

    /// The record under `key` unless it is forgotten.
    fn get(&self, key: &K, policy: &Policy, now_ms: u64) -> Option<&Record> {
        self.records
            .get(key)
            .filter(|r| !forgotten(r, policy, now_ms))
    }

    fn failed(&mut self, key: K, policy: &Policy, now_ms: u64) -> &mut Record {
        if !self.records.contains_key(&key) && self.records.len() >= policy.max_entries {
            self.make_room(policy, now_ms);
        }
        let r = self.records.entry(key).or_insert(Record::fresh(now_ms));
        if forgotten(r, policy, now_ms) {
            *r = Record::fresh(now_ms);
        }
        r.failures = r.failures.saturating_add(1);
        r.last_failure_ms = now_ms;
        r
    }

    /// Frees one slot at least: forgotten records, else the oldest unlocked one,
    /// else the lock that ends first.
    fn make_room(&mut self, policy: &Policy, now_ms: u64) {
        self.records.retain(|_, r| !forgotten(r, policy, now_ms));
        if self.records.len() < policy.max_entries {
            return;
        }
        let victim = self
            .records
            .iter()
            .min_by_key(|(_, r)| {
                let locked = r.locked_at(now_ms);
                (
                    locked,
                    if locked {
                        r.locked_until_ms.unwrap_or(0)
                    } else {
                        r.last_failure_ms
                    },
                )
            })
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.records.remove(&k);
        }
    }

    fn remove(&mut self, key: &K) -> bool {
        self.records.remove(key).is_some()
    }

    fn len(&self) -> usize {
        self.records.len()
    }
}

fn forgotten(r: &Record, policy: &Policy, now_ms: u64) -> bool {
    !r.locked_at(now_ms) && now_ms.saturating_sub(r.last_failure_ms) >= policy.forget_after_ms
}

/// The delay owed after `failures` failures when `free` are free.
fn delay_ms(policy: &Policy, failures: u32, free: u32) -> u64 {
    if failures <= free {
        return 0;
    }
    let doublings = (failures - free - 1).min(63);
    policy
        .base_delay_ms
        .saturating_mul(1u64 << doublings)
        .min(policy.max_delay_ms)
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The throttle's state: failure counts per account and per address.
#[derive(Debug)]
pub struct Throttle {
    policy: Policy,
    accounts: Table<String>,
    addresses: Table<IpAddr>,
}

impl Throttle {
    pub fn new(policy: Policy) -> Self {
        Throttle {
            policy,
            accounts: Table::new(),
            addresses: Table::new(),
        }
    }

    fn account_wait(&self, account: &str, now_ms: u64) -> Option<Throttled> {
        let r = self
            .accounts
            .get(&account.to_owned(), &self.policy, now_ms)?;
        if let Some(until) = r.locked_until_ms.filter(|t| now_ms < *t) {
            return Some(Throttled {
                scope: Scope::Account,
                retry_after_ms: until - now_ms,
                locked: true,
            });
        }
        let ready = r.last_failure_ms.saturating_add(delay_ms(
            &self.policy,
            r.failures,
            self.policy.free_failures,
        ));
        (now_ms < ready).then(|| Throttled {
            scope: Scope::Account,
            retry_after_ms: ready - now_ms,
            locked: false,
        })
    }

    fn address_wait(&self, addr: IpAddr, now_ms: u64) -> Option<Throttled> {
        let r = self
            .addresses
            .get(&address_key(addr), &self.policy, now_ms)?;
        let ready = r.last_failure_ms.saturating_add(delay_ms(
            &self.policy,
            r.failures,
            self.policy.address_free_failures,
        ));
        (now_ms < ready).then(|| Throttled {
            scope: Scope::Address,
            retry_after_ms: ready - now_ms,
            locked: false,
        })
    }

    /// Whether an attempt to log into `account` from `addr` may be checked now. A
    /// lock-out wins; otherwise the longer of the two waits.
    pub fn check(&self, account: &str, addr: IpAddr, now_ms: u64) -> Result<(), Throttled> {
        let account = self.account_wait(account, now_ms);
        if let Some(t) = account.filter(|t| t.locked) {
            return Err(t);
        }
        match (account, self.address_wait(addr, now_ms)) {
            (Some(a), Some(b)) => Err(if b.retry_after_ms > a.retry_after_ms {
                b
            } else {
                a
            }),
            (Some(t), None) | (None, Some(t)) => Err(t),
            (None, None) => Ok(()),
        }
    }

    /// Counts a failed attempt; returns what the next attempt will face, if
    /// anything, so the answer to this one can say so.
    pub fn failed(&mut self, account: &str, addr: IpAddr, now_ms: u64) -> Option<Throttled> {
        let policy = self.policy;
        let r = self.accounts.failed(account.to_owned(), &policy, now_ms);
        if r.failures >= policy.lockout_failures {
            // Stays at the threshold until a success or a quiet period: after the
            // lock ends, the next failure locks again.
            r.locked_until_ms = Some(now_ms.saturating_add(policy.lockout_ms));
        }
        self.addresses.failed(address_key(addr), &policy, now_ms);
        self.check(account, addr, now_ms).err()
    }

    /// A successful login: the account's count starts over.
    pub fn succeeded(&mut self, account: &str) {
        self.accounts.remove(&account.to_owned());
    }

    /// Lifts an account's lock-out and delay (an admin's decision); false if there
    /// was nothing to lift.
    pub fn lift(&mut self, account: &str) -> bool {
        self.accounts.remove(&account.to_owned())
    }

    /// Accounts with a current lock-out, with the time left, for an admin's view.
    pub fn locked(&self, now_ms: u64) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .accounts
            .records
            .iter()
            .filter_map(|(k, r)| {
                r.locked_until_ms
                    .filter(|t| now_ms < *t)
                    .map(|t| (k.clone(), t - now_ms))
            })
            .collect();
        out.sort();
        out
    }

    /// Records held (accounts, addresses).
    pub fn sizes(&self) -> (usize, usize) {
        (self.accounts.len(), self.addresses.len())
    }
}

/// The throttle shared by the login paths (REST and web), reading the clock and
/// logging lock-outs.
#[derive(Debug)]
pub struct LoginThrottle(Mutex<Throttle>);

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(Policy::default())
    }
}

impl LoginThrottle {
    pub fn new(policy: Policy) -> Self {
        LoginThrottle(Mutex::new(Throttle::new(policy)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Throttle> {
        // Every mutation leaves the tables consistent, so a poisoned lock is usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Throttle::check`] now; a refusal is logged at debug level only, since an
    /// attack would otherwise flood the log (the lock-out itself is logged once).
    pub fn check(&self, account: &str, addr: IpAddr) -> Result<(), Throttled> {
        let r = self
            .lock()
            .check(account, addr, cairn_shared::time::now_ms());
        if let Err(t) = &r {
            tracing::debug!(account, %addr, reason = %t, "login attempt held back");
        }
        r
    }

    /// [`Throttle::failed`] now, logging a new lock-out.
    pub fn failed(&self, account: &str, addr: IpAddr) -> Option<Throttled> {
        let mut t = self.lock();
        let now = cairn_shared::time::now_ms();
        let was_locked = t.check(account, addr, now).is_err_and(|t| t.locked);
        let next = t.failed(account, addr, now);
        drop(t);
        match next {
            Some(n) if n.locked && !was_locked => tracing::warn!(
                account,
                %addr,
                lock_secs = n.retry_after_secs(),
                "account locked after too many failed logins"
            ),
            Some(n) => {
                tracing::info!(account, %addr, retry_after_secs = n.retry_after_secs(), scope = ?n.scope, "failed login; further attempts delayed")
            }
            None => tracing::info!(account, %addr, "failed login"),
        }
        next
    }

    /// [`Throttle::succeeded`].
    pub fn succeeded(&self, account: &str) {
        self.lock().succeeded(account);
    }

    /// [`Throttle::lift`], logged with who lifted it.
    pub fn lift(&self, account: &str, by: &str) -> bool {
        let lifted = self.lock().lift(account);
        if lifted {
            tracing::info!(account, by, "login lock-out lifted");
        }
        lifted
    }

    /// [`Throttle::locked`] now.
    pub fn locked(&self) -> Vec<(String, u64)> {
        self.lock().locked(cairn_shared::time::now_ms())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: &str = "alice";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Fails `n` times for `account` from `addr`, each as soon as allowed; returns
    /// the time after the last failure.
    fn fail_n(t: &mut Throttle, account: &str, addr: IpAddr, n: u32, mut now: u64) -> u64 {
        for _ in 0..n {
            if let Err(w) = t.check(account, addr, now) {
                now += w.retry_after_ms;
            }
            t.check(account, addr, now).unwrap();
            t.failed(account, addr, now);
        }
        now
    }

    #[test]
    fn free_failures_then_delays_double_up_to_the_cap() {
        let p = Policy {
            lockout_failures: 100,
            ..Policy::default()
        };
        let mut t = Throttle::new(p);
        let addr = ip("10.0.0.1");
        let mut now = 1_000_000;
        for _ in 0..p.free_failures {
            t.check(A, addr, now).unwrap();
            assert_eq!(t.failed(A, addr, now), None);
        }
        let mut waits = vec![];
        for _ in 0..8 {
            t.check(A, addr, now).unwrap();
            let w = t.failed(A, addr, now).unwrap();
            assert_eq!((w.scope, w.locked), (Scope::Account, false));
            // The attempt is refused until the wait is over, then allowed.
            assert_eq!(
                t.check(A, addr, now + w.retry_after_ms - 1).unwrap_err(),
                Throttled {
                    retry_after_ms: 1,
                    ..w
                }
            );
            waits.push(w.retry_after_ms);
            now += w.retry_after_ms;
        }
        assert_eq!(
            waits,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
    }

    #[test]
    fn many_failures_lock_the_account_until_the_period_ends() {
        let p = Policy::default();
        let mut t = Throttle::new(p);
        // Spread over addresses, so only the account counts.
        let mut now = 0;
        for n in 0..p.lockout_failures {
            let addr = IpAddr::from([10, 0, 0, n as u8]);
            if let Err(w) = t.check(A, addr, now) {
                assert!(!w.locked);
                now += w.retry_after_ms;
            }
            t.failed(A, addr, now);
        }
        let w = t.check(A, ip("10.9.9.9"), now).unwrap_err();
        assert_eq!(
            w,
            Throttled {
                scope: Scope::Account,
                retry_after_ms: p.lockout_ms,
                locked: true
            }
        );
        assert_eq!(t.locked(now), vec![(A.to_string(), p.lockout_ms)]);
        // Other accounts are not affected.
        t.check("bob", ip("10.9.9.9"), now).unwrap();
        // After the period an attempt is allowed; one more failure locks again.
        now += p.lockout_ms;
        t.check(A, ip("10.9.9.9"), now).unwrap();
        assert!(t.failed(A, ip("10.9.9.9"), now).unwrap().locked);
    }

    #[test]
    fn success_resets_the_account_but_not_the_address() {
        let p = Policy::default();
        let mut t = Throttle::new(p);
        let addr = ip("10.0.0.1");
        let now = fail_n(&mut t, A, addr, p.free_failures + 2, 0);
        assert!(t.check(A, addr, now).is_err());
        t.succeeded(A);
        t.check(A, addr, now).unwrap();
        // The address still remembers its failures: a few more from it are delayed
        // even for another account.
        let now = fail_n(
            &mut t,
            "bob",
            addr,
            p.address_free_failures - (p.free_failures + 2),
            now,
        );
        t.succeeded("bob");
        let mut fresh = Throttle::new(p);
        assert!(fresh.failed("carol", addr, now).is_none());
        let w = t.failed("carol", addr, now).unwrap();
        assert_eq!(
            (w.scope, w.retry_after_ms),
            (Scope::Address, p.base_delay_ms)
        );
    }

    #[test]
    fn one_address_guessing_many_accounts_is_slowed() {
        let p = Policy::default();
        let mut t = Throttle::new(p);
        let addr = ip("192.0.2.7");
        let mut now = 0;
        for n in 0..p.address_free_failures {
            t.check(&format!("user{n}"), addr, now).unwrap();
            t.failed(&format!("user{n}"), addr, now);
        }
        let w = t.failed("user-next", addr, now).unwrap();
        assert_eq!(w.scope, Scope::Address);
        assert!(!w.locked);
        assert_eq!(t.check("anyone", addr, now).unwrap_err(), w);
        // Another address is not slowed; the address is never locked.
        t.check("anyone", ip("192.0.2.8"), now).unwrap();
        now = fail_n(&mut t, "x", addr, 40, now);
        assert!(t.check("y", addr, now).err().is_none_or(|w| !w.locked));
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64() {
        let p = Policy {
            address_free_failures: 0,
            ..Policy::default()
        };
        let mut t = Throttle::new(p);
        t.failed("a", ip("2001:db8:1:2::1"), 0);
        let w = t.check("b", ip("2001:db8:1:2:ffff::9"), 0).unwrap_err();
        assert_eq!(w.scope, Scope::Address);
        t.check("b", ip("2001:db8:1:3::1"), 0).unwrap();
        // An IPv4-mapped address counts as the IPv4 one.
        t.failed("a", ip("::ffff:10.0.0.1"), 0);
        assert!(t.check("b", ip("10.0.0.1"), 0).is_err());
    }

    #[test]
    fn lift_clears_a_lock_out() {
        let p = Policy::default();
        let mut t = Throttle::new(p);
        let mut now = 0;
        for n in 0..p.lockout_failures {
            let addr = IpAddr::from([10, 1, 0, n as u8]);
            if let Err(w) = t.check(A, addr, now) {
                now += w.retry_after_ms;
            }
            t.failed(A, addr, now);
        }
        assert!(t.check(A, ip("10.2.0.1"), now).unwrap_err().locked);
        assert!(t.lift(A));
        t.check(A, ip("10.2.0.1"), now).unwrap();
        assert!(t.locked(now).is_empty());
        assert!(!t.lift(A), "nothing left to lift");
    }

    #[test]
    fn quiet_counts_are_forgotten() {
        let p = Policy::default();
        let mut t = Throttle::new(p);
        let addr = ip("10.0.0.1");
        let now = fail_n(&mut t, A, addr, p.free_failures + 3, 0);
        assert!(t.check(A, addr, now).is_err());
        let later = now + p.forget_after_ms;
        t.check(A, addr, later).unwrap();
        // A failure after the quiet period is the first of a new count.
        assert_eq!(t.failed(A, addr, later), None);
    }

    #[test]
    fn tables_stay_bounded_and_a_flood_does_not_lift_a_lock_out() {
        let p = Policy {
            max_entries: 50,
            lockout_failures: 2,
            ..Policy::default()
        };
        let mut t = Throttle::new(p);
        t.failed(A, ip("10.0.0.1"), 0);
        t.failed(A, ip("10.0.0.1"), 0);
        assert!(t.check(A, ip("10.0.0.9"), 1).unwrap_err().locked);
        // Fresh names from fresh addresses, one failure each: they push each other
        // out, never the lock.
        for n in 0..500u32 {
            let addr = IpAddr::from((n + 0x0b00_0000).to_be_bytes());
            t.failed(&format!("flood{n}"), addr, u64::from(n) + 1);
        }
        let (accounts, addresses) = t.sizes();
        assert!(accounts <= 50 && addresses <= 50, "{accounts} {addresses}");
        assert!(t.check(A, ip("10.0.0.9"), 600).unwrap_err().locked);
        // The newest flood records are the ones kept.
        assert!(t.accounts.records.contains_key("flood499"));
        assert!(!t.accounts.records.contains_key("flood0"));
    }

    #[test]
    fn messages_are_exact() {
        let t = |scope, ms, locked| {
            Throttled {
                scope,
                retry_after_ms: ms,
                locked,
            }
            .to_string()
        };
        assert_eq!(
            t(Scope::Account, 7_200, false),
            "too many failed logins for this account; try again in 8 s"
        );
        assert_eq!(
            t(Scope::Address, 30_000, false),
            "too many failed logins from your address; try again in 30 s"
        );
        assert_eq!(
            t(Scope::Account, 15 * 60_000, true),
            "this account is locked after too many failed logins; try again in 15 min or ask an admin to unlock it"
        );
        assert_eq!(
            t(Scope::Account, 1, false),
            "too many failed logins for this account; try again in 1 s"
        );
    }

    #[test]
    fn the_shared_handle_reads_the_clock() {
        let h = LoginThrottle::new(Policy {
            free_failures: 0,
            ..Policy::default()
        });
        let addr = ip("10.0.0.1");
        h.check(A, addr).unwrap();
        let w = h.failed(A, addr).unwrap();
        assert_eq!(w.scope, Scope::Account);
        assert!(h.check(A, addr).is_err());
        assert!(h.lift(A, "admin"));
        h.check(A, addr).unwrap();
        h.succeeded(A);
        assert!(h.locked().is_empty());
    }
}
