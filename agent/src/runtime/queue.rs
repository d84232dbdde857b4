//! The host's queue for container creates and starts.
//!
//! A Docker Engine asked to create and start a hundred containers at once answers
//! each of them slowly, and some not within the agent's call timeout: a class
//! arriving together would see launches fail for no fault of their own. So at most
//! a few container operations run at a time (the permits, `--container-slots`), and
//! the others wait their turn here, first come first served. A waiting launch knows
//! how many wait ahead of it ([`Ticket::ahead`]), which the supervisor shows its
//! user (`waiting for the host (12 ahead)`); how many wait in all
//! ([`HostQueue::waiting`]) goes to the controller in heartbeats, whose scheduler
//! steers new launches away from a host with a long queue.
//!
//! Not a `tokio::sync::Semaphore`: a semaphore is fair too, but cannot say where a
//! waiter stands, and the place in line is what a user is shown. Tickets are
//! numbered on arrival; a ticket may take a permit when fewer tickets wait ahead of
//! it than permits are free, so the order of arrival is the order of service.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Container operations one host runs at once unless told otherwise (shared with
/// the controller's scheduler).
pub const DEFAULT_CONTAINER_SLOTS: usize = cairn_shared::workload::DEFAULT_CONTAINER_SLOTS as usize;

#[derive(Debug)]
struct Inner {
    permits: usize,
    in_use: usize,
    /// Numbers of the tickets still waiting, oldest first.
    waiting: BTreeSet<u64>,
    next: u64,
}

/// A FIFO of container operations with a bounded number running; shared by the
/// supervisor's launch tasks.
#[derive(Debug)]
pub struct HostQueue {
    inner: Mutex<Inner>,
    /// Bumped whenever a permit is freed or a ticket leaves the line, so waiters
    /// look again (and update what they show).
    moved: tokio::sync::watch::Sender<u64>,
}

impl HostQueue {
    /// A queue running at most `permits` operations at once (at least one).
    pub fn new(permits: usize) -> Arc<Self> {
        Arc::new(HostQueue {
            inner: Mutex::new(Inner {
                permits: permits.max(1),
                in_use: 0,
                waiting: BTreeSet::new(),
                next: 0,
            }),
            moved: tokio::sync::watch::Sender::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.moved.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes how many operations may run at once (at least one); operations under
    /// way keep their permits.
    pub fn set_permits(&self, permits: usize) {
        self.lock().permits = permits.max(1);
        self.bump();
    }

    pub fn permits(&self) -> usize {
        self.lock().permits
    }

    /// Operations running now.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Tickets waiting for a permit.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Joins the end of the line.
    pub fn join(self: &Arc<Self>) -> Ticket {
        let mut inner = self.lock();
        let number = inner.next;
        inner.next += 1;
        inner.waiting.insert(number);
        drop(inner);
        Ticket {
            queue: self.clone(),
            number,
            waiting: true,
        }
    }
}

/// A place in the line. Dropped while waiting, it leaves the line (the launch was
/// cancelled): those behind it move up.
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<HostQueue>,
    number: u64,
    waiting: bool,
}

impl Ticket {
    /// How many tickets wait ahead of this one (0 once it holds a permit).
    pub fn ahead(&self) -> usize {
        if !self.waiting {
            return 0;
        }
        self.queue.lock().waiting.range(..self.number).count()
    }

    /// Takes a permit if it is this ticket's turn.
    pub fn try_take(&mut self) -> Option<Permit> {
        if !self.waiting {
            return None;
        }
        let mut inner = self.queue.lock();
        let free = inner.permits.saturating_sub(inner.in_use);
        let ahead = inner.waiting.range(..self.number).count();
        if ahead >= free {
            return None;
        }
        inner.waiting.remove(&self.number);
        inner.in_use += 1;
        drop(inner);
        self.waiting = false;
        Some(Permit {
            queue: self.queue.clone(),
        })
    }

    /// Waits for this ticket's turn and takes a permit. Cancel-safe: dropping the
    /// future keeps the ticket in line, so it can be awaited again (the supervisor
    /// races it against its progress reports).
    pub async fn turn(&mut self) -> Permit {
        loop {
            // Subscribed before looking, so a move between the look and the wait is
            // not missed.
            let mut moved = self.queue.moved.subscribe();
            if let Some(p) = self.try_take() {
                return p;
            }
            if moved.changed().await.is_err() {
                // Cannot happen while this ticket holds the queue (and so its
                // sender); never spin if it did.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.waiting {
            self.queue.lock().waiting.remove(&self.number);
            self.queue.bump();
        }
    }
}

/// The right to run one container operation; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    queue: Arc<HostQueue>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut inner = self.queue.lock();
            inner.in_use = inner.in_use.saturating_sub(1);
        }
        self.queue.bump();
    }
}

/// The `Preparing` detail of a launch waiting in the queue.
pub fn waiting_detail(ahead: usize) -> String {
    format!("waiting for the host ({ahead} ahead)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_first_permits_are_taken_at_once_and_the_rest_wait_in_order() {
        let q = HostQueue::new(2);
        let mut t: Vec<Ticket> = (0..5).map(|_| q.join()).collect();
        assert_eq!(
            t.iter().map(Ticket::ahead).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        let p0 = t[0].try_take().expect("first");
        let p1 = t[1].try_take().expect("second");
        assert_eq!((q.in_use(), q.waiting()), (2, 3));
        // No third permit, and the later ones may not jump the line.
        assert!(t[2].try_take().is_none());
        assert!(t[4].try_take().is_none());
        assert_eq!(
            t[2..].iter().map(Ticket::ahead).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        drop(p0);
        // One permit free: only the head of the line gets it.
        assert!(t[3].try_take().is_none());
        let p2 = t[2].try_take().expect("third, once a permit is free");
        assert_eq!(t[3].ahead(), 0);
        assert_eq!(t[4].ahead(), 1);
        drop((p1, p2));
        assert_eq!(q.in_use(), 0);
    }

    #[test]
    fn a_ticket_that_leaves_moves_those_behind_it_up() {
        let q = HostQueue::new(1);
        let mut first = q.join();
        let _p = first.try_take().expect("free");
        let a = q.join();
        let b = q.join();
        let c = q.join();
        assert_eq!((a.ahead(), b.ahead(), c.ahead()), (0, 1, 2));
        drop(b);
        assert_eq!((a.ahead(), c.ahead()), (0, 1));
        assert_eq!(q.waiting(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permits_bound_concurrency_and_service_is_first_come_first_served() {
        let q = HostQueue::new(3);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let order = Arc::new(Mutex::new(vec![]));
        let mut tasks = vec![];
        for n in 0..40usize {
            // Tickets are taken in order here; the tasks then race for permits.
            let mut ticket = q.join();
            let (running, most, order) = (running.clone(), most.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = ticket.turn().await;
                order.lock().unwrap().push(n);
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 3);
        // Taken in ticket order, give or take the permits running side by side.
        let order = order.lock().unwrap().clone();
        assert_eq!(order.len(), 40);
        for (i, n) in order.iter().enumerate() {
            assert!(n.abs_diff(i) < 3, "ticket {n} served {i}th: {order:?}");
        }
        assert_eq!((q.in_use(), q.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_a_permit_is_freed_and_more_permits_let_more_in() {
        let q = HostQueue::new(1);
        let mut a = q.join();
        let pa = a.try_take().expect("free");
        let mut b = q.join();
        let mut c = q.join();
        let waiter = tokio::spawn(async move {
            let p = b.turn().await;
            drop(p);
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(pa);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        // Raising the permits lets the next in at once.
        let _pc = c.try_take().expect("c is next and a permit is free");
        let mut d = q.join();
        assert!(d.try_take().is_none());
        q.set_permits(2);
        assert!(d.try_take().is_some());
    }

    #[test]
    fn the_detail_says_how_many_wait_ahead() {
        assert_eq!(waiting_detail(12), "waiting for the host (12 ahead)");
    }
}
