//! Leases: when a shard's primary may acknowledge writes, and when the Raft leader may promote
//! its secondary (docs/design/replication.md § Leases, epochs and promotion).
//!
//! - [`LeaseConfig`]: the three durations and the inequality between them, checked at start.
//! - [`LeaseHolder`] (every node): the latest grant this node received, measured on its own
//!   monotonic clock **from the moment it sent the request**, so the lease never outlives what
//!   the leader granted. A write for (shard, epoch) is acknowledged only while the latest
//!   unexpired grant lists exactly that pair.
//! - [`LeaseAuthority`] (the Raft leader): answers renewals after confirming leadership,
//!   remembers when each node last renewed and which node last held each shard, and decides
//!   promotions ([`LeaseAuthority::promotions`]).
//!
//! The RPC and the renewal and promotion loops live in `cluster.rs`; this module is pure state
//! over a [`Clock`] reading, so the timing relation between a partitioned primary and its
//! promotion is tested here with manual clocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use sextant_core::determinism::planted::{is_planted, Bug};

/// Default interval between a node's lease renewals (`--lease-renew-interval`).
pub const LEASE_RENEW_MS_DEFAULT: u64 = 1_000;
/// Default lease length (`--lease-duration`): four renewals, so one or two lost renewals do not
/// interrupt writes.
pub const LEASE_MS_DEFAULT: u64 = 4_000;
/// Default silence after which the leader promotes a shard's secondary (`--promotion-timeout`).
pub const PROMOTION_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// The assumed bound on how much faster or slower one node's monotonic clock may run than
/// another's, in percent. Real oscillators drift by ~0.01 %; the bound is large so that a
/// simulated or virtualised clock that stalls or races stays inside it.
pub const CLOCK_RATE_DRIFT_PERCENT_MAX: u64 = 10;
/// Room for the time between the leader's grant decision and the promotion entry applying on
/// the new primary — the leader cannot measure the requester's send time, so it counts from
/// its own (later) grant moment, and the margin covers scheduling delays on the leader.
pub const LEASE_MARGIN_MS: u64 = 500;

/// The lease timing of a node (and, on the leader, of the cluster's promotions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How often a node asks the leader to renew.
    pub lease_renew_ms: u64,
    /// How long a grant lasts, from the moment the request was sent.
    pub lease_ms: u64,
    /// How long the leader waits after a primary's last renewal before promoting.
    pub promotion_timeout_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { lease_renew_ms: LEASE_RENEW_MS_DEFAULT, lease_ms: LEASE_MS_DEFAULT, promotion_timeout_ms: PROMOTION_TIMEOUT_MS_DEFAULT }
    }
}

impl LeaseConfig {
    /// The longest a grant the leader made at its time `t` can be live, in the leader's time:
    /// the lease stretched by the clock-rate bound, plus the margin.
    pub fn fence_ms(&self) -> u64 {
        self.lease_ms.saturating_mul(100 + CLOCK_RATE_DRIFT_PERCENT_MAX) / 100 + LEASE_MARGIN_MS
    }

    /// Checks the relations safety depends on: a primary's lease (drift and margin included)
    /// ends before the leader may promote, and a node renews at least twice per lease.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_renew_ms == 0 || self.lease_ms == 0 || self.promotion_timeout_ms == 0 {
            return Err(format!("lease timing must be positive: --lease-renew-interval {} ms, --lease-duration {} ms, --promotion-timeout {} ms", self.lease_renew_ms, self.lease_ms, self.promotion_timeout_ms));
        }
        if self.lease_renew_ms.saturating_mul(2) > self.lease_ms {
            return Err(format!(
                "--lease-renew-interval {} ms must be at most half of --lease-duration {} ms, so one lost renewal does not end the lease",
                self.lease_renew_ms, self.lease_ms
            ));
        }
        let fence_ms = self.fence_ms();
        if fence_ms >= self.promotion_timeout_ms {
            return Err(format!(
                "--promotion-timeout {} ms must exceed --lease-duration {} ms × {}% clock-rate drift + {} ms margin = {fence_ms} ms; otherwise a partitioned primary could still acknowledge writes after its secondary is promoted",
                self.promotion_timeout_ms,
                self.lease_ms,
                100 + CLOCK_RATE_DRIFT_PERCENT_MAX,
                LEASE_MARGIN_MS
            ));
        }
        Ok(())
    }
}

fn ms_of(ns: u64) -> u64 {
    ns / 1_000_000
}

// ---------------------------------------------------------------------------------------------
// The node side.

/// A lease the leader granted this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// This node's monotonic clock when it sent the renewal request.
    pub sent_at_ns: u64,
    /// The lease length: the smaller of this node's and the leader's.
    pub lease_ms: u64,
    /// The leader that granted it.
    pub leader: u64,
    /// The shards this node may acknowledge writes for, with the epoch of each.
    pub shards: BTreeMap<u32, u64>,
    /// Shards this node is primary of in the leader's map but was not granted, and why.
    pub withheld: BTreeMap<u32, String>,
    /// Nodes the leader saw silent for longer than the promotion timeout when it granted.
    pub silent_nodes: BTreeSet<u64>,
}

impl Grant {
    fn expires_at_ns(&self) -> u64 {
        self.sent_at_ns.saturating_add(self.lease_ms.saturating_mul(1_000_000))
    }
}

/// Why this node may not acknowledge a write for a shard.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRefusal {
    #[error("shard {shard}: this node holds no lease from the metadata leader yet (it renews every {renew_ms} ms; retry shortly)")]
    NoLease { shard: u32, renew_ms: u64 },
    #[error("shard {shard}: this node's lease expired {ago_ms} ms ago (it cannot reach the metadata leader; its shards may be promoted elsewhere)")]
    Expired { shard: u32, ago_ms: u64 },
    #[error("shard {shard}: epoch {epoch} is not granted to this node by the metadata leader ({held})")]
    EpochNotGranted { shard: u32, epoch: u64, held: String },
}

/// The latest grant this node holds, and whether it needs one at all.
#[derive(Debug)]
pub struct LeaseHolder {
    /// False on a bare node (no metadata group: the simulator, most tests): writes need no
    /// lease. `cluster.rs` sets it when the node's raft member starts.
    required: AtomicBool,
    renew_ms: std::sync::atomic::AtomicU64,
    grant: Mutex<Option<Grant>>,
    /// Counts accepted grants, so a write can wait for the next one.
    accepted: tokio::sync::watch::Sender<u64>,
    /// Wakes the renewal loop early (this node's view of the map gave it a new shard).
    pub renew_now: tokio::sync::Notify,
}

impl Default for LeaseHolder {
    fn default() -> Self {
        LeaseHolder {
            required: AtomicBool::new(false),
            renew_ms: std::sync::atomic::AtomicU64::new(LEASE_RENEW_MS_DEFAULT),
            grant: Mutex::new(None),
            accepted: tokio::sync::watch::channel(0).0,
            renew_now: tokio::sync::Notify::new(),
        }
    }
}

impl LeaseHolder {
    /// From now on writes need a lease (the node is a member of a metadata group).
    pub fn require(&self, renew_ms: u64) {
        self.renew_ms.store(renew_ms, Ordering::Relaxed);
        self.required.store(true, Ordering::Release);
    }

    pub fn required(&self) -> bool {
        self.required.load(Ordering::Acquire)
    }

    /// Takes a grant; an answer to an older request than the current grant's is ignored (answers
    /// can arrive out of order, and the older one may list shards the newer one dropped).
    /// Answers whether it was taken.
    pub fn accept(&self, grant: Grant) -> bool {
        let mut current = self.grant.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|held| held.sent_at_ns > grant.sent_at_ns) {
            return false;
        }
        *current = Some(grant);
        drop(current);
        self.accepted.send_modify(|n| *n += 1);
        true
    }

    /// A receiver that sees every later accepted grant.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.accepted.subscribe()
    }

    /// The renewal interval this node uses.
    pub fn renew_ms(&self) -> u64 {
        self.renew_ms.load(Ordering::Relaxed)
    }

    /// The current grant (admin, metrics).
    pub fn grant(&self) -> Option<Grant> {
        self.grant.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// May this node acknowledge a write for `shard` at `epoch` at its monotonic time `now_ns`?
    pub fn check(&self, shard: u32, epoch: u64, now_ns: u64) -> Result<(), LeaseRefusal> {
        if !self.required() {
            return Ok(());
        }
        let current = self.grant.lock().unwrap_or_else(|p| p.into_inner());
        let Some(grant) = current.as_ref() else {
            return Err(LeaseRefusal::NoLease { shard, renew_ms: self.renew_ms.load(Ordering::Relaxed) });
        };
        let expires_at_ns = grant.expires_at_ns();
        if now_ns >= expires_at_ns && !is_planted(Bug::AckAfterLeaseLapsed) {
            return Err(LeaseRefusal::Expired { shard, ago_ms: ms_of(now_ns - expires_at_ns) });
        }
        match grant.shards.get(&shard) {
            Some(granted) if *granted == epoch => Ok(()),
            Some(granted) => Err(LeaseRefusal::EpochNotGranted { shard, epoch, held: format!("node {} granted epoch {granted}", grant.leader) }),
            None => {
                let held = match grant.withheld.get(&shard) {
                    Some(reason) => format!("withheld by node {}: {reason}", grant.leader),
                    None => format!("node {}'s map does not make this node its primary", grant.leader),
                };
                Err(LeaseRefusal::EpochNotGranted { shard, epoch, held })
            }
        }
    }

    /// Did the metadata leader, in this node's live grant at `now_ns`, list `node` as silent
    /// for longer than the promotion timeout? False without a live grant (and on a bare node).
    pub fn node_known_down(&self, node: u64, now_ns: u64) -> bool {
        let current = self.grant.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().is_some_and(|grant| now_ns < grant.expires_at_ns() && grant.silent_nodes.contains(&node))
    }

    /// The shards this node holds a live lease for at `now_ns` (the per-shard gauge).
    pub fn live_shards(&self, now_ns: u64) -> BTreeMap<u32, u64> {
        let current = self.grant.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(grant) if now_ns < grant.expires_at_ns() => grant.shards.clone(),
            _ => BTreeMap::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The leader side.

/// One shard's placement as the leader's applied map has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub primary: Option<u64>,
    pub secondary: Option<u64>,
    pub epoch: u64,
}

/// The last grant of a shard the leader made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node: u64,
    pub epoch: u64,
    /// The leader's monotonic clock when it granted.
    pub granted_ns: u64,
}

#[derive(Debug, Default)]
struct Authority {
    /// The leader's monotonic clock when this node last became leader; `None` while not.
    leader_since_ns: Option<u64>,
    /// The Raft term it leads in.
    term: u64,
    /// The leader's clock at each node's last renewal (this term only).
    renewed_ns: BTreeMap<u64, u64>,
    holders: BTreeMap<u32, Holder>,
    /// Shards already logged as "both replicas silent", so an outage is logged once.
    silent_logged: BTreeSet<u32>,
}

/// What the leader decided for one tick of the promotion loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromotionPlan {
    /// (shard, expected epoch) to propose as `PromoteShard`.
    pub promote: Vec<(u32, u64)>,
    /// Shards whose primary and secondary are both silent: nothing to promote to. Only shards
    /// not reported by an earlier tick of the same outage.
    pub both_silent_new: Vec<u32>,
    /// All shards whose replicas are both silent now (the metric).
    pub both_silent: usize,
}

/// The leader's lease bookkeeping. Every node has one; it acts only while the node leads.
#[derive(Debug, Default)]
pub struct LeaseAuthority {
    state: Mutex<Authority>,
}

impl LeaseAuthority {
    /// This node leads in `term` at `now_ns`. The first call of a term starts it afresh:
    /// everyone's silence is counted from now (a new leader never promotes before a full
    /// promotion timeout — another leader may have granted leases in between) and the holder
    /// table starts empty. Answers whether this call started the term.
    pub fn lead_term(&self, term: u64, now_ns: u64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.leader_since_ns.is_some() && state.term == term {
            return false;
        }
        *state = Authority { leader_since_ns: Some(now_ns), term, ..Authority::default() };
        true
    }

    pub fn step_down(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Authority::default();
    }

    pub fn is_leading(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).leader_since_ns.is_some()
    }

    /// Grants `node` the shards it is primary of in `map` (after the caller confirmed this
    /// node still leads), at the leader's time `now_ns`. A shard last granted to another node
    /// within [`LeaseConfig::fence_ms`] is withheld: that node's lease may still be live, and
    /// two nodes must never acknowledge one shard at once. Answers (granted, withheld).
    pub fn grant(&self, node: u64, map: &BTreeMap<u32, Placement>, now_ns: u64, config: &LeaseConfig) -> (BTreeMap<u32, u64>, BTreeMap<u32, String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut granted = BTreeMap::new();
        let mut withheld = BTreeMap::new();
        if state.leader_since_ns.is_none() {
            return (granted, withheld);
        }
        state.renewed_ns.insert(node, now_ns);
        let fence_ns = config.fence_ms().saturating_mul(1_000_000);
        for (shard, placement) in map {
            if placement.primary != Some(node) {
                continue;
            }
            if let Some(holder) = state.holders.get(shard) {
                let age_ns = now_ns.saturating_sub(holder.granted_ns);
                if holder.node != node && age_ns < fence_ns {
                    withheld.insert(*shard, format!("node {} held its lease {} ms ago; it may be live for another {} ms", holder.node, ms_of(age_ns), ms_of(fence_ns - age_ns)));
                    continue;
                }
            }
            state.holders.insert(*shard, Holder { node, epoch: placement.epoch, granted_ns: now_ns });
            granted.insert(*shard, placement.epoch);
        }
        (granted, withheld)
    }

    /// How long `node` has been silent at `now_ns`, in ms (counted from when this node became
    /// leader for a node that has not renewed since). `None` while not leading.
    pub fn silent_ms(&self, node: u64, now_ns: u64) -> Option<u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let since = state.leader_since_ns?;
        let last = state.renewed_ns.get(&node).copied().unwrap_or(since).max(since);
        Some(ms_of(now_ns.saturating_sub(last)))
    }

    /// The nodes of `map` (primaries and secondaries) silent for longer than the promotion
    /// timeout at `now_ns`, silence counted from this node's election. Empty while not leading.
    pub fn silent_nodes(&self, map: &BTreeMap<u32, Placement>, now_ns: u64, config: &LeaseConfig) -> BTreeSet<u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(since) = state.leader_since_ns else {
            return BTreeSet::new();
        };
        map.values()
            .flat_map(|p| [p.primary, p.secondary])
            .flatten()
            .filter(|node| ms_of(now_ns.saturating_sub(state.renewed_ns.get(node).copied().unwrap_or(since).max(since))) > config.promotion_timeout_ms)
            .collect()
    }

    /// The leader's current lease holder of each shard whose grant is live at `now_ns`
    /// (admin's LEASE column).
    pub fn holders(&self, now_ns: u64, config: &LeaseConfig) -> BTreeMap<u32, Holder> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let live_ns = config.lease_ms.saturating_mul(1_000_000);
        state.holders.iter().filter(|(_, h)| now_ns.saturating_sub(h.granted_ns) < live_ns).map(|(s, h)| (*s, *h)).collect()
    }

    /// Which shards to promote at `now_ns`: those whose primary has been silent for longer than
    /// the promotion timeout while their secondary renewed within one lease. A shard whose
    /// replicas are both silent is not promoted (reported once per outage).
    pub fn promotions(&self, map: &BTreeMap<u32, Placement>, now_ns: u64, config: &LeaseConfig) -> PromotionPlan {
        let mut plan = PromotionPlan::default();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(since) = state.leader_since_ns else {
            return plan;
        };
        let silent_ms = |state: &Authority, node: u64| ms_of(now_ns.saturating_sub(state.renewed_ns.get(&node).copied().unwrap_or(since).max(since)));
        for (shard, placement) in map {
            let (Some(primary), Some(secondary)) = (placement.primary, placement.secondary) else {
                continue;
            };
            if silent_ms(&state, primary) <= config.promotion_timeout_ms {
                state.silent_logged.remove(shard);
                continue;
            }
            if silent_ms(&state, secondary) < config.lease_ms {
                plan.promote.push((*shard, placement.epoch));
                state.silent_logged.remove(shard);
            } else {
                plan.both_silent += 1;
                if state.silent_logged.insert(*shard) {
                    plan.both_silent_new.push(*shard);
                }
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_core::clock::{Clock, ManualClock};

    const MS: u64 = 1_000_000;

    fn config() -> LeaseConfig {
        LeaseConfig { lease_renew_ms: 100, lease_ms: 400, promotion_timeout_ms: 1_000 }
    }

    fn grant(sent_at_ns: u64, shards: &[(u32, u64)]) -> Grant {
        Grant { sent_at_ns, lease_ms: 400, leader: 1, shards: shards.iter().copied().collect(), withheld: BTreeMap::new(), silent_nodes: BTreeSet::new() }
    }

    fn map(entries: &[(u32, Option<u64>, Option<u64>, u64)]) -> BTreeMap<u32, Placement> {
        entries.iter().map(|(s, p, q, e)| (*s, Placement { primary: *p, secondary: *q, epoch: *e })).collect()
    }

    // Goal: the startup check refuses every timing where a lease could outlive the promotion
    // timeout or a single lost renewal would end a lease, and names the flags.
    // Method: a table of configurations → Ok or the start of the error.
    #[test]
    fn config_invariant() {
        let check = |config: LeaseConfig, expected: Result<(), &str>| match (config.validate(), expected) {
            (Ok(()), Ok(())) => {}
            (Err(got), Err(want)) => assert!(got.starts_with(want), "{config:?}: {got:?} should start with {want:?}"),
            (got, want) => panic!("{config:?}: got {got:?}, want {want:?}"),
        };
        check(LeaseConfig::default(), Ok(()));
        check(config(), Ok(()));
        // 4000 × 1.1 + 500 = 4900: the promotion timeout must exceed it.
        check(LeaseConfig { promotion_timeout_ms: 4_900, ..LeaseConfig::default() }, Err("--promotion-timeout 4900 ms must exceed"));
        check(LeaseConfig { promotion_timeout_ms: 4_901, ..LeaseConfig::default() }, Ok(()));
        check(LeaseConfig { lease_renew_ms: 2_001, ..LeaseConfig::default() }, Err("--lease-renew-interval 2001 ms must be at most half"));
        check(LeaseConfig { lease_ms: 0, ..LeaseConfig::default() }, Err("lease timing must be positive"));
    }

    // Goal: a lease is measured from the request's send time, refuses other epochs and other
    // shards, expires exactly lease_ms after the send, and an older answer never replaces a
    // newer grant. A bare node (no metadata group) needs no lease.
    // Method: a manual clock; check() at chosen instants against the expected refusal.
    #[test]
    fn holder_grant_expiry_and_epochs() {
        let holder = LeaseHolder::default();
        assert_eq!(holder.check(3, 1, 0), Ok(()), "bare node: no lease needed");
        holder.require(100);
        let clock = ManualClock::new(0);
        clock.advance_ms(1_000);
        let check = |shard: u32, epoch: u64, expected: Result<(), LeaseRefusal>| {
            assert_eq!(holder.check(shard, epoch, clock.now_monotonic_ns()), expected, "shard {shard} epoch {epoch} at {} ms", clock.now_monotonic_ns() / MS);
        };
        check(3, 1, Err(LeaseRefusal::NoLease { shard: 3, renew_ms: 100 }));
        let sent = clock.now_monotonic_ns();
        // The answer arrives 150 ms after the request was sent; the lease still counts from the send.
        clock.advance_ms(150);
        assert!(holder.accept(grant(sent, &[(3, 2)])));
        check(3, 2, Ok(()));
        check(3, 1, Err(LeaseRefusal::EpochNotGranted { shard: 3, epoch: 1, held: "node 1 granted epoch 2".into() }));
        check(4, 2, Err(LeaseRefusal::EpochNotGranted { shard: 4, epoch: 2, held: "node 1's map does not make this node its primary".into() }));
        clock.advance_ms(249);
        check(3, 2, Ok(()));
        clock.advance_ms(1);
        check(3, 2, Err(LeaseRefusal::Expired { shard: 3, ago_ms: 0 }));
        clock.advance_ms(70);
        check(3, 2, Err(LeaseRefusal::Expired { shard: 3, ago_ms: 70 }));
        assert_eq!(holder.live_shards(clock.now_monotonic_ns()), BTreeMap::new());
        // Two renewals answered out of order: the older answer is ignored.
        let first = clock.now_monotonic_ns();
        clock.advance_ms(10);
        let second = clock.now_monotonic_ns();
        assert!(holder.accept(grant(second, &[])));
        assert!(!holder.accept(grant(first, &[(3, 2)])), "an older request's answer must not replace a newer grant");
        check(3, 2, Err(LeaseRefusal::EpochNotGranted { shard: 3, epoch: 2, held: "node 1's map does not make this node its primary".into() }));
    }

    // Goal: the leader grants a node exactly the shards it is primary of, withholds a shard
    // whose previous holder's lease may be live (with why), and grants it once the fence passed.
    // Method: a manual leader clock and two placements of one shard.
    #[test]
    fn authority_grants_and_fences() {
        let authority = LeaseAuthority::default();
        let config = config();
        let before = map(&[(0, Some(1), Some(2), 1), (1, Some(2), Some(1), 1)]);
        assert_eq!(authority.grant(1, &before, 0, &config), (BTreeMap::new(), BTreeMap::new()), "not leading: nothing granted");
        authority.lead_term(1, 0);
        assert_eq!(authority.grant(1, &before, 5 * MS, &config).0, BTreeMap::from([(0, 1)]));
        assert_eq!(authority.grant(2, &before, 5 * MS, &config).0, BTreeMap::from([(1, 1)]));
        // An operator moves shard 0 to node 2 at epoch 2; node 1's lease may be live.
        let after = map(&[(0, Some(2), Some(1), 2), (1, Some(2), Some(1), 1)]);
        let (granted, withheld) = authority.grant(2, &after, 100 * MS, &config);
        assert_eq!(granted, BTreeMap::from([(1, 1)]));
        // fence = 400 × 1.1 + 500 = 940 ms after the grant at 5 ms.
        assert_eq!(withheld, BTreeMap::from([(0, "node 1 held its lease 95 ms ago; it may be live for another 845 ms".to_string())]));
        assert_eq!(authority.grant(1, &after, 200 * MS, &config).0, BTreeMap::new(), "node 1 renews without shard 0");
        assert!(authority.grant(2, &after, 944 * MS, &config).0.get(&0).is_none(), "still fenced at 944 ms");
        assert_eq!(authority.grant(2, &after, 945 * MS, &config).0, BTreeMap::from([(0, 2), (1, 1)]));
        let holders = authority.holders(945 * MS, &config);
        assert_eq!(holders[&0], Holder { node: 2, epoch: 2, granted_ns: 945 * MS });
    }

    // Goal: promotion needs a primary silent for longer than the promotion timeout and a live
    // secondary; both silent → nothing promoted, reported once per outage; a new leader counts
    // silence from its own start.
    // Method: a manual leader clock; promotions() at chosen instants.
    #[test]
    fn promotion_decisions() {
        let authority = LeaseAuthority::default();
        let config = config();
        let shards = map(&[(0, Some(1), Some(2), 1), (1, Some(2), Some(3), 4), (2, None, None, 0), (3, Some(3), None, 1)]);
        assert_eq!(authority.promotions(&shards, 10_000 * MS, &config), PromotionPlan::default(), "not leading");
        authority.lead_term(1, 10_000 * MS);
        assert!(!authority.lead_term(1, 10_050 * MS), "the same term does not restart the table");
        assert_eq!(authority.silent_ms(1, 10_500 * MS), Some(500), "silence counts from the leader's start");
        // Node 2 renews all along; nodes 1 and 3 never do.
        for t in (10_000..=11_000).step_by(100) {
            authority.grant(2, &shards, t * MS, &config);
        }
        assert_eq!(authority.promotions(&shards, 11_000 * MS, &config), PromotionPlan::default(), "exactly the timeout: not yet");
        let plan = authority.promotions(&shards, 11_001 * MS, &config);
        assert_eq!(plan.promote, vec![(0, 1)], "shard 0: primary 1 silent, secondary 2 live");
        assert_eq!((plan.both_silent, plan.both_silent_new.clone()), (0, vec![]), "shard 1's primary is node 2, live");
        // Node 2 goes silent too: shard 0 has nobody to promote to.
        let plan = authority.promotions(&shards, 11_500 * MS, &config);
        assert_eq!((plan.promote, plan.both_silent, plan.both_silent_new), (vec![], 1, vec![0]));
        let plan = authority.promotions(&shards, 11_600 * MS, &config);
        assert_eq!((plan.both_silent, plan.both_silent_new), (1, vec![]), "reported once per outage");
    }

    // Goal: a partitioned primary stops acknowledging before the leader may promote its
    // secondary, even when its clock runs CLOCK_RATE_DRIFT_PERCENT_MAX slower than the
    // leader's and its last request took a while to reach the leader.
    // Method: two manual clocks (node, leader) driven from one real timeline in 1 ms steps;
    // the node's last renewal is sent at real 0, granted at real 40 ms; afterwards the node is
    // cut off. Find the first real instant the node refuses and the first the leader would
    // promote, and require the first to come earlier — then require it of the default config.
    #[test]
    fn partitioned_primary_stops_before_promotion() {
        // The tightest promotion timeout the startup check allows, and the defaults.
        let tightest = LeaseConfig { promotion_timeout_ms: config().fence_ms() + 1, ..config() };
        for config in [tightest, LeaseConfig::default()] {
            for node_rate_percent in [100 - CLOCK_RATE_DRIFT_PERCENT_MAX, 100, 100 + CLOCK_RATE_DRIFT_PERCENT_MAX] {
                let leader_clock = ManualClock::new(0);
                let holder = LeaseHolder::default();
                holder.require(config.lease_renew_ms);
                let authority = LeaseAuthority::default();
                authority.lead_term(1, leader_clock.now_monotonic_ns());
                let shards = map(&[(7, Some(1), Some(2), 3)]);
                // Node 1 sends at real 0; the leader grants at real 40 ms; the answer arrives at 80.
                let sent = 0;
                let (mut refused_at, mut promoted_at) = (None, None);
                // The node's monotonic clock, in hundredths of a nanosecond, runs at its rate.
                let mut node_ns_scaled = 0u64;
                for real_ms in 1..=3 * config.promotion_timeout_ms {
                    node_ns_scaled += node_rate_percent * MS;
                    let node_now = node_ns_scaled / 100;
                    leader_clock.advance_ms(1);
                    let leader_now = leader_clock.now_monotonic_ns();
                    if real_ms == 40 {
                        let (granted, _) = authority.grant(1, &shards, leader_now, &config);
                        authority.grant(2, &shards, leader_now, &config);
                        assert_eq!(granted, BTreeMap::from([(7, 3)]));
                        holder.accept(Grant { sent_at_ns: sent, lease_ms: config.lease_ms, leader: 9, shards: granted, withheld: BTreeMap::new(), silent_nodes: BTreeSet::new() });
                    }
                    // The secondary keeps renewing; the primary is cut off after real 40 ms.
                    if real_ms % config.lease_renew_ms == 0 {
                        authority.grant(2, &shards, leader_now, &config);
                    }
                    if real_ms > 80 && refused_at.is_none() && holder.check(7, 3, node_now).is_err() {
                        refused_at = Some(real_ms);
                    }
                    if promoted_at.is_none() && !authority.promotions(&shards, leader_now, &config).promote.is_empty() {
                        promoted_at = Some(real_ms);
                    }
                }
                let (refused_at, promoted_at) = (refused_at.expect("the lease ends"), promoted_at.expect("the leader promotes"));
                assert!(refused_at < promoted_at, "{config:?}, node clock at {node_rate_percent}%: refuses at real {refused_at} ms, promotion at {promoted_at} ms");
                assert!(promoted_at > config.promotion_timeout_ms, "{config:?}: promoted at {promoted_at} ms");
            }
        }
    }

    // Goal: the leader lists as silent exactly the map's nodes that have not renewed for longer
    // than the promotion timeout (counted from its election), and a holder trusts that list
    // only while its grant is live.
    // Method: an authority elected at 0; node 1 renews at 900 ms, nodes 2 and 3 never; a holder
    // with a grant listing node 3, checked before and after the grant expires.
    #[test]
    fn silent_nodes_are_listed_and_trusted_only_under_a_live_lease() {
        let authority = LeaseAuthority::default();
        let placements = map(&[(0, Some(1), Some(2), 1), (1, Some(2), Some(3), 1), (2, Some(3), None, 1)]);
        assert_eq!(authority.silent_nodes(&placements, 5_000 * MS, &config()), BTreeSet::new(), "not leading: nothing known");
        authority.lead_term(1, 0);
        authority.grant(1, &placements, 900 * MS, &config());
        assert_eq!(authority.silent_nodes(&placements, 1_000 * MS, &config()), BTreeSet::new(), "silence counts from the election: exactly the timeout is not past it");
        assert_eq!(authority.silent_nodes(&placements, 1_001 * MS, &config()), BTreeSet::from([2, 3]));
        assert_eq!(authority.silent_nodes(&placements, 1_901 * MS, &config()), BTreeSet::from([1, 2, 3]));

        let holder = LeaseHolder::default();
        holder.require(100);
        assert!(!holder.node_known_down(3, 0), "no grant: nothing known");
        holder.accept(Grant { silent_nodes: BTreeSet::from([3]), ..grant(10 * MS, &[(0, 1)]) });
        assert!(holder.node_known_down(3, 409 * MS));
        assert!(!holder.node_known_down(2, 409 * MS), "only listed nodes");
        assert!(!holder.node_known_down(3, 410 * MS), "the grant expired at 10 + 400 ms");
    }
}
