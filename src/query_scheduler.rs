//! Admission of queries: a concurrency limit, priority classes and load shedding.
//!
//! Every query holds a [`QueryPermit`] while it fetches and evaluates. At most
//! `concurrency_max` permits exist at once, and `alert_reserved` of them may only go to
//! alert-class queries, so rule evaluation never waits behind dashboards or ad-hoc queries
//! (BRIEF.md: "alert evaluation must not queue behind dashboards").
//!
//! A query that cannot start waits in one bounded queue, ordered by class (alert, then
//! dashboard, then ad-hoc) and first come, first served within a class. Whenever a permit is
//! released the queue is served from the front while the head can start. Shedding takes the
//! lowest class first:
//!
//! - queue full: an arrival of a higher class than the lowest queued one takes its place (the
//!   newest of the lowest class is shed, [`Shed::Displaced`]); otherwise the arrival is shed
//!   ([`Shed::QueueFull`]);
//! - a query that waited longer than `queue_wait_ms_max` is shed ([`Shed::WaitTooLong`]); as
//!   higher classes are served first, the lowest class reaches this limit first.
//!
//! Waiting is measured on the node's `Clock` (so simulated skew reaches it). A waiter also
//! sleeps on the runtime's timer, but only to wake up and look at the `Clock` again: the timer
//! never decides anything. The queue's invariant, checked after every change: no queued query
//! could start now.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use sextant_core::clock::Clock;
use tokio::sync::oneshot;

/// A query's class. Higher classes are admitted first and shed last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Someone typing queries (the default).
    Adhoc = 0,
    /// A dashboard panel.
    Dashboard = 1,
    /// Rule evaluation; may use the reserved slots.
    Alert = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Adhoc, Priority::Dashboard, Priority::Alert];

    /// Parses the `X-Sextant-Query-Priority` header or the `priority` parameter.
    pub fn parse(text: &str) -> Result<Priority, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "adhoc" | "ad-hoc" => Ok(Priority::Adhoc),
            "dashboard" => Ok(Priority::Dashboard),
            "alert" => Ok(Priority::Alert),
            _ => Err(format!("unknown query priority {text:?}: expected alert, dashboard or adhoc")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Adhoc => "adhoc",
            Priority::Dashboard => "dashboard",
            Priority::Alert => "alert",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scheduler's limits (from `QueryConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerLimits {
    pub concurrency_max: usize,
    pub alert_reserved: usize,
    pub queue_max: usize,
    pub queue_wait_ms_max: i64,
}

/// Why a query was not admitted. Each message names the limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    #[error("query shed: the query queue is full (limit query_queue_max={max}) and holds no query of a lower class than {class}; retry later")]
    QueueFull { class: Priority, max: usize },
    #[error("query shed: a higher-priority query took its place in the full query queue (limit query_queue_max={max}; {class} queries are shed first); retry later")]
    Displaced { class: Priority, max: usize },
    #[error("query shed: waited {waited_ms} ms for one of {concurrency_max} query slots, longer than the limit query_queue_wait_max={max_ms}ms ({class} queries are served after higher classes); retry later")]
    WaitTooLong { class: Priority, waited_ms: u64, max_ms: i64, concurrency_max: usize },
}

type Delivery = (oneshot::Sender<Result<QueryPermit, Shed>>, Result<QueryPermit, Shed>);

struct Waiter {
    enqueued_ns: u64,
    tx: oneshot::Sender<Result<QueryPermit, Shed>>,
}

#[derive(Default)]
struct State {
    /// Running queries per class, indexed by `Priority as usize`.
    running: [usize; 3],
    /// Highest class first (`Reverse`), then arrival order.
    queue: BTreeMap<(Reverse<Priority>, u64), Waiter>,
    next_seq: u64,
}

/// The node's query admission (one per node).
pub struct QueryScheduler {
    limits: SchedulerLimits,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    queue_depth: Gauge,
    running: Gauge,
}

impl std::fmt::Debug for QueryScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryScheduler").field("limits", &self.limits).finish()
    }
}

/// Permission to run one query; releasing it (drop) lets the next queued query start.
pub struct QueryPermit {
    scheduler: Arc<QueryScheduler>,
    class: Priority,
    /// Time spent in the queue.
    pub waited_ns: u64,
}

impl std::fmt::Debug for QueryPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryPermit").field("class", &self.class).field("waited_ns", &self.waited_ns).finish()
    }
}

impl QueryPermit {
    pub fn class(&self) -> Priority {
        self.class
    }
}

impl Drop for QueryPermit {
    fn drop(&mut self) {
        self.scheduler.release(self.class);
    }
}

/// Removes a waiter whose future was dropped (the client went away) from the queue.
struct QueueGuard<'a> {
    scheduler: &'a Arc<QueryScheduler>,
    key: (Reverse<Priority>, u64),
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        let removed = {
            let mut state = self.scheduler.state.lock().expect("scheduler lock");
            let removed = state.queue.remove(&self.key);
            self.scheduler.queue_depth.set(state.queue.len() as i64);
            removed
        };
        drop(removed);
    }
}

impl QueryScheduler {
    pub fn new(limits: SchedulerLimits, clock: Arc<dyn Clock>, queue_depth: Gauge, running: Gauge) -> Arc<QueryScheduler> {
        assert!(limits.concurrency_max >= 1, "concurrency_max must be at least 1");
        assert!(limits.alert_reserved < limits.concurrency_max, "alert_reserved must leave a slot for other classes");
        Arc::new(QueryScheduler { limits, clock, state: Mutex::new(State::default()), queue_depth, running })
    }

    pub fn limits(&self) -> SchedulerLimits {
        self.limits
    }

    /// Queries waiting, per class (for tests and reports).
    pub fn queued(&self) -> [usize; 3] {
        let state = self.state.lock().expect("scheduler lock");
        let mut out = [0; 3];
        for (Reverse(class), _) in state.queue.keys() {
            out[*class as usize] += 1;
        }
        out
    }

    /// Queries running, per class.
    pub fn running(&self) -> [usize; 3] {
        self.state.lock().expect("scheduler lock").running
    }

    fn can_run(&self, state: &State, class: Priority) -> bool {
        let total: usize = state.running.iter().sum();
        if total >= self.limits.concurrency_max {
            return false;
        }
        class == Priority::Alert
            || state.running[Priority::Adhoc as usize] + state.running[Priority::Dashboard as usize] < self.limits.concurrency_max - self.limits.alert_reserved
    }

    fn permit(self: &Arc<Self>, state: &mut State, class: Priority, waited_ns: u64) -> QueryPermit {
        state.running[class as usize] += 1;
        QueryPermit { scheduler: self.clone(), class, waited_ns }
    }

    /// Sheds waiters past the wait limit, then starts queued queries from the front while they
    /// can start. Deliveries are sent by the caller after the lock is released (a failed send
    /// drops a permit, which takes the lock again).
    fn serve_queue(self: &Arc<Self>, state: &mut State, now_ns: u64, deliveries: &mut Vec<Delivery>) {
        let wait_max_ns = (self.limits.queue_wait_ms_max.max(0) as u64).saturating_mul(1_000_000);
        let expired: Vec<(Reverse<Priority>, u64)> =
            state.queue.iter().filter(|(_, w)| now_ns.saturating_sub(w.enqueued_ns) > wait_max_ns).map(|(k, _)| *k).collect();
        for key in expired {
            let waiter = state.queue.remove(&key).expect("key listed above");
            let waited_ms = now_ns.saturating_sub(waiter.enqueued_ns) / 1_000_000;
            let shed = Shed::WaitTooLong { class: key.0 .0, waited_ms, max_ms: self.limits.queue_wait_ms_max, concurrency_max: self.limits.concurrency_max };
            deliveries.push((waiter.tx, Err(shed)));
        }
        while let Some((&key, _)) = state.queue.first_key_value() {
            let class = key.0 .0;
            // The queue is ordered by class, and a class that cannot start blocks every lower
            // one too (they need the same or a smaller set of slots).
            if !self.can_run(state, class) {
                break;
            }
            let waiter = state.queue.remove(&key).expect("first key exists");
            let permit = self.permit(state, class, now_ns.saturating_sub(waiter.enqueued_ns));
            deliveries.push((waiter.tx, Ok(permit)));
        }
        assert!(state.queue.keys().all(|(Reverse(c), _)| !self.can_run(state, *c)));
        self.queue_depth.set(state.queue.len() as i64);
        self.running.set(state.running.iter().sum::<usize>() as i64);
    }

    fn deliver(deliveries: Vec<Delivery>) {
        for (tx, result) in deliveries {
            // A waiter that went away drops the permit here, which releases its slot.
            drop(tx.send(result));
        }
    }

    fn release(self: &Arc<Self>, class: Priority) {
        let mut deliveries = Vec::new();
        {
            let mut state = self.state.lock().expect("scheduler lock");
            assert!(state.running[class as usize] > 0, "released a {class} permit that was never granted");
            state.running[class as usize] -= 1;
            let now_ns = self.clock.now_monotonic_ns();
            self.serve_queue(&mut state, now_ns, &mut deliveries);
        }
        Self::deliver(deliveries);
    }

    /// Waits for a slot for a query of `class`, or says why it was shed.
    pub async fn admit(self: &Arc<Self>, class: Priority) -> Result<QueryPermit, Shed> {
        let (tx, mut rx) = oneshot::channel();
        let mut deliveries = Vec::new();
        let key;
        let enqueued_ns;
        {
            let mut state = self.state.lock().expect("scheduler lock");
            let now_ns = self.clock.now_monotonic_ns();
            enqueued_ns = now_ns;
            self.serve_queue(&mut state, now_ns, &mut deliveries);
            // The queue holds nothing that could start, so an arrival that can start goes
            // ahead without overtaking anyone who could.
            if self.can_run(&state, class) {
                let permit = self.permit(&mut state, class, 0);
                self.running.set(state.running.iter().sum::<usize>() as i64);
                drop(state);
                Self::deliver(deliveries);
                return Ok(permit);
            }
            if state.queue.len() >= self.limits.queue_max {
                let lowest = state.queue.last_key_value().map(|(k, _)| *k);
                match lowest {
                    Some(lowest_key) if lowest_key.0 .0 < class => {
                        let waiter = state.queue.remove(&lowest_key).expect("last key exists");
                        deliveries.push((waiter.tx, Err(Shed::Displaced { class: lowest_key.0 .0, max: self.limits.queue_max })));
                    }
                    _ => {
                        drop(state);
                        Self::deliver(deliveries);
                        return Err(Shed::QueueFull { class, max: self.limits.queue_max });
                    }
                }
            }
            key = (Reverse(class), state.next_seq);
            state.next_seq += 1;
            state.queue.insert(key, Waiter { enqueued_ns, tx });
            self.queue_depth.set(state.queue.len() as i64);
        }
        Self::deliver(deliveries);
        let _guard = QueueGuard { scheduler: self, key };
        let wait_max_ns = (self.limits.queue_wait_ms_max.max(0) as u64).saturating_mul(1_000_000);
        loop {
            let waited_ns = self.clock.now_monotonic_ns().saturating_sub(enqueued_ns);
            // Wake when the Clock says the wait limit may have passed, then let the Clock decide.
            let sleep_ms = (wait_max_ns.saturating_sub(waited_ns) / 1_000_000).saturating_add(1);
            tokio::select! {
                biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
                result = &mut rx => {
                    return match result {
                        Ok(result) => result,
                        // The scheduler never drops a sender without sending; be safe anyway.
                        Err(_) => Err(Shed::WaitTooLong { class, waited_ms: waited_ns / 1_000_000, max_ms: self.limits.queue_wait_ms_max, concurrency_max: self.limits.concurrency_max }),
                    };
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {
                    let mut deliveries = Vec::new();
                    {
                        let mut state = self.state.lock().expect("scheduler lock");
                        let now_ns = self.clock.now_monotonic_ns();
                        self.serve_queue(&mut state, now_ns, &mut deliveries);
                    }
                    Self::deliver(deliveries);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sextant_core::clock::ManualClock;

    use super::*;

    fn scheduler(concurrency_max: usize, alert_reserved: usize, queue_max: usize) -> (Arc<QueryScheduler>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(0));
        let limits = SchedulerLimits { concurrency_max, alert_reserved, queue_max, queue_wait_ms_max: 1_000 };
        (QueryScheduler::new(limits, clock.clone(), Gauge::default(), Gauge::default()), clock)
    }

    // Goal: reserved slots go only to alert queries; releasing a slot serves the queue by
    // class, alert first. Method: concurrency 2 with 1 reserved; hold the shared slot, queue
    // adhoc then dashboard, check the alert runs at once and release order serves dashboard
    // before adhoc.
    #[tokio::test]
    async fn reserved_slot_and_class_order() {
        let (s, _clock) = scheduler(2, 1, 10);
        let held = s.admit(Priority::Adhoc).await.unwrap();
        assert_eq!(s.running(), [1, 0, 0]);
        let s1 = s.clone();
        let adhoc = tokio::spawn(async move { s1.admit(Priority::Adhoc).await.map(|p| p.class()) });
        let s2 = s.clone();
        let dashboard = tokio::spawn(async move {
            let p = s2.admit(Priority::Dashboard).await.unwrap();
            (p.class(), p)
        });
        while s.queued() != [1, 1, 0] {
            tokio::task::yield_now().await;
        }
        let alert = s.admit(Priority::Alert).await.unwrap();
        assert_eq!(s.running(), [1, 0, 1]);
        drop(alert);
        // The reserved slot is free, but it is not for dashboards.
        assert_eq!(s.queued(), [1, 1, 0]);
        drop(held);
        let (class, dashboard_permit) = dashboard.await.unwrap();
        assert_eq!(class, Priority::Dashboard);
        assert_eq!(s.queued(), [1, 0, 0]);
        drop(dashboard_permit);
        assert_eq!(adhoc.await.unwrap(), Ok(Priority::Adhoc));
        assert_eq!(s.running(), [0, 0, 0]);
    }

    // Goal: a full queue sheds the lowest class: an equal-or-lower arrival is refused, a
    // higher one displaces the newest queued query of the lowest class; a wait past the limit
    // (on the node's clock) sheds. Method: concurrency 1, queue 2, a manual clock.
    #[tokio::test]
    async fn full_queue_and_wait_limit_shed_lowest_class() {
        let (s, clock) = scheduler(1, 0, 2);
        let held = s.admit(Priority::Dashboard).await.unwrap();
        let mut waiters = Vec::new();
        // One at a time, so which waiter is the newest does not depend on task scheduling
        // order (madsim randomizes it per seed; awaiting the wrong one would wait forever on the
        // manual clock).
        for queued in 1..=2 {
            let s2 = s.clone();
            waiters.push(tokio::spawn(async move { s2.admit(Priority::Adhoc).await.map(|p| p.class()) }));
            while s.queued() != [queued, 0, 0] {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(s.admit(Priority::Adhoc).await.unwrap_err(), Shed::QueueFull { class: Priority::Adhoc, max: 2 });
        let s2 = s.clone();
        let alert = tokio::spawn(async move { s2.admit(Priority::Alert).await.map(|p| p.class()) });
        let newest_adhoc = waiters.pop().unwrap();
        assert_eq!(newest_adhoc.await.unwrap(), Err(Shed::Displaced { class: Priority::Adhoc, max: 2 }));
        assert_eq!(s.queued(), [1, 0, 1]);
        // The remaining adhoc query waits past the limit on the node's clock and is shed.
        clock.advance_ms(1_001);
        let err = waiters.pop().unwrap().await.unwrap().unwrap_err();
        assert!(matches!(err, Shed::WaitTooLong { class: Priority::Adhoc, max_ms: 1_000, .. }), "{err:?}");
        assert!(err.to_string().contains("query_queue_wait_max=1000ms"), "{err}");
        // The alert query waited as long, but is served as soon as the slot is free... unless it
        // too passed the limit: it did, so it is shed as well.
        let alert_result = alert.await.unwrap();
        assert!(matches!(alert_result, Err(Shed::WaitTooLong { class: Priority::Alert, .. })), "{alert_result:?}");
        drop(held);
        assert_eq!(s.running(), [0, 0, 0]);
        assert_eq!(s.queued(), [0, 0, 0]);
    }
}
