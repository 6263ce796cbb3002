//! Does this node's wall clock run behind its clients'? A node judges every sample's time by
//! its own clock (BRIEF.md, time acceptance): one whose clock is behind by more than
//! `future_skew_ms_max` sees every current sample as from the future and refuses it with 400.
//! That is the right verdict per sample, but alone it leaves the node looking healthy while it
//! stores nothing current. So the node also compares its clock with its clients': for each
//! client address it keeps the newest sample time of the client's latest remote-write request
//! against its own wall clock when the request arrived. When at least [`CLIENTS_MIN`] clients
//! heard from within [`EVIDENCE_WINDOW_MS`] — and more than half of those heard from — were
//! ahead by more than `future_skew_ms_max`, the node concludes that its own clock is the one
//! that is off: `/-/ready` answers 503 saying so (load balancers and writers route around it),
//! and `sextant_clock_behind_suspected` / `sextant_clock_behind_estimate_seconds` say it in
//! `/metrics`.
//!
//! Why clients and a majority: one client with a clock far ahead is that client's problem,
//! not the node's, and must not take the node out of service; several independent clients
//! agreeing is evidence about the node. A client that sends old data (a backlog) votes "not
//! ahead". Behind a proxy every client has one address: the check then never concludes
//! (conservative), and the per-sample 400s remain. A node whose clock runs *ahead* sees current
//! samples as old, which the out-of-order and age rules already judge; it is not detected here.
//!
//! No I/O and no clock reads here: the caller passes the node's injected `Clock` readings.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Observations older than this (by the node's monotonic clock) no longer count.
pub const EVIDENCE_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Clients that must agree before the node blames its own clock.
pub const CLIENTS_MIN: usize = 2;

/// Client addresses remembered; past it the stalest is forgotten.
pub const CLIENTS_TRACKED_MAX: usize = 1024;

/// One client's latest remote-write request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Observation {
    /// The node's monotonic time when the request arrived (ns).
    at_ns: u64,
    /// The request's newest sample time minus the node's wall clock then (ms).
    ahead_ms: i64,
}

/// What the clients say about this node's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockVerdict {
    /// Too few clients, or most of them within bounds.
    Consistent,
    /// Most clients heard from are ahead of this node past the bound.
    Behind {
        /// The median of how far the agreeing clients are ahead (ms).
        estimate_ms: i64,
        /// Clients ahead past the bound, and clients heard from in the window.
        clients_ahead: usize,
        clients_seen: usize,
    },
}

/// The per-client observations (see the module comment).
#[derive(Debug, Default)]
pub struct ClockCheck {
    clients: Mutex<BTreeMap<IpAddr, Observation>>,
}

impl ClockCheck {
    pub fn new() -> ClockCheck {
        ClockCheck::default()
    }

    /// Notes a remote-write request from `client` whose newest sample is at `newest_t_ms`,
    /// received when this node's wall clock read `wall_ms` and its monotonic clock `now_ns`.
    pub fn observe(&self, client: IpAddr, newest_t_ms: i64, wall_ms: i64, now_ns: u64) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if !clients.contains_key(&client) && clients.len() >= CLIENTS_TRACKED_MAX {
            let stalest = clients.iter().min_by_key(|(ip, o)| (o.at_ns, **ip)).map(|(ip, _)| *ip);
            if let Some(ip) = stalest {
                clients.remove(&ip);
            }
        }
        clients.insert(client, Observation { at_ns: now_ns, ahead_ms: newest_t_ms.saturating_sub(wall_ms) });
    }

    /// The verdict at monotonic time `now_ns` for the bound `future_skew_ms_max`.
    pub fn verdict(&self, future_skew_ms_max: i64, now_ns: u64) -> ClockVerdict {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let window_ns = EVIDENCE_WINDOW_MS * 1_000_000;
        let recent: Vec<i64> = clients.values().filter(|o| now_ns.saturating_sub(o.at_ns) <= window_ns).map(|o| o.ahead_ms).collect();
        let mut ahead: Vec<i64> = recent.iter().copied().filter(|&a| a > future_skew_ms_max).collect();
        if ahead.len() < CLIENTS_MIN || ahead.len() * 2 <= recent.len() {
            return ClockVerdict::Consistent;
        }
        ahead.sort_unstable();
        ClockVerdict::Behind { estimate_ms: ahead[ahead.len() / 2], clients_ahead: ahead.len(), clients_seen: recent.len() }
    }
}

impl ClockVerdict {
    /// Why the node is not ready, for `/-/ready` (None when consistent).
    pub fn reason(&self, future_skew_ms_max: i64) -> Option<String> {
        match self {
            ClockVerdict::Consistent => None,
            ClockVerdict::Behind { estimate_ms, clients_ahead, clients_seen } => Some(format!(
                "this node's wall clock seems about {} s behind: {clients_ahead} of the {clients_seen} clients heard from in the last {} s sent samples that far ahead of it, past future_skew_ms_max ({} s), and their current samples are refused as from the future; correct this node's clock (NTP)",
                estimate_ms / 1000,
                EVIDENCE_WINDOW_MS / 1000,
                future_skew_ms_max / 1000
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND_MS: i64 = 600_000;
    const S: u64 = 1_000_000_000;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    // Goal: the node blames its own clock only when several clients, and most of those heard
    // from recently, are ahead past the bound. Method: table of client observations (client,
    // how far ahead, seconds before the verdict) → expected verdict.
    #[test]
    fn verdicts() {
        let cases: &[(&str, &[(u8, i64, u64)], Option<(i64, usize, usize)>)] = &[
            ("no clients", &[], None),
            ("one client far ahead is that client's problem", &[(1, 3_000_000, 1)], None),
            ("two clients far ahead", &[(1, 3_000_000, 1), (2, 3_100_000, 2)], Some((3_100_000, 2, 2))),
            ("two of three ahead", &[(1, 3_000_000, 1), (2, 3_100_000, 2), (3, 1_000, 3)], Some((3_100_000, 2, 3))),
            ("two of four ahead is not a majority", &[(1, 3_000_000, 1), (2, 3_100_000, 2), (3, 1_000, 3), (4, -5_000, 4)], None),
            ("within the bound", &[(1, BOUND_MS, 1), (2, BOUND_MS, 1)], None),
            ("just past the bound", &[(1, BOUND_MS + 1, 1), (2, BOUND_MS + 1, 1)], Some((BOUND_MS + 1, 2, 2))),
            ("stale evidence does not count", &[(1, 3_000_000, 301), (2, 3_000_000, 400)], None),
            ("a backlogged client votes not ahead", &[(1, 3_000_000, 1), (2, 3_000_000, 1), (3, -3_600_000, 1), (4, -7_200_000, 1)], None),
        ];
        for (name, observations, expected) in cases {
            let check = ClockCheck::new();
            let now_ns = 1_000 * S;
            for &(client, ahead_ms, ago_s) in observations.iter() {
                check.observe(ip(client), 1_700_000_000_000 + ahead_ms, 1_700_000_000_000, now_ns - ago_s * S);
            }
            let expected = match expected {
                None => ClockVerdict::Consistent,
                Some((estimate_ms, clients_ahead, clients_seen)) => ClockVerdict::Behind { estimate_ms: *estimate_ms, clients_ahead: *clients_ahead, clients_seen: *clients_seen },
            };
            assert_eq!(check.verdict(BOUND_MS, now_ns), expected, "{name}");
            assert_eq!(expected.reason(BOUND_MS).is_some(), matches!(expected, ClockVerdict::Behind { .. }), "{name}");
        }
    }

    // Goal: a client's latest request replaces its earlier one (a corrected clock clears the
    // verdict), and the table stays bounded. Method: observe, re-observe, overflow.
    #[test]
    fn latest_request_counts_and_the_table_is_bounded() {
        let check = ClockCheck::new();
        let now_ns = 1_000 * S;
        check.observe(ip(1), 3_000_000, 0, now_ns);
        check.observe(ip(2), 3_000_000, 0, now_ns);
        assert!(matches!(check.verdict(BOUND_MS, now_ns), ClockVerdict::Behind { .. }));
        // The node's clock was corrected: the same clients now look current.
        check.observe(ip(1), 1_000, 0, now_ns + S);
        check.observe(ip(2), 1_000, 0, now_ns + S);
        assert_eq!(check.verdict(BOUND_MS, now_ns + S), ClockVerdict::Consistent);
        let many = ClockCheck::new();
        for n in 0..(CLIENTS_TRACKED_MAX as u32 + 10) {
            many.observe(IpAddr::from(n.to_be_bytes()), 0, 0, u64::from(n));
        }
        let clients = many.clients.lock().unwrap();
        assert_eq!(clients.len(), CLIENTS_TRACKED_MAX);
        // The stalest ten went first.
        assert!(!clients.contains_key(&IpAddr::from(9u32.to_be_bytes())));
        assert!(clients.contains_key(&IpAddr::from(10u32.to_be_bytes())));
    }
}
