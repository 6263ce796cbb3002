//! A linearizability checker for reads of a replicated state machine (oracle
//! `f-linearizable-reads` of the metadata scenario).
//!
//! Why this is enough: every metadata write is a raft log entry, so the log index is a total
//! order of all writes that every member applies identically, and a read answers the state
//! after some prefix of the log, named by its applied index. A history of writes and reads is
//! then linearizable exactly when each read can be placed at its index in that order without
//! contradicting real time:
//!
//! 1. **no stale read** — a read invoked after a write was acknowledged answers an index at
//!    least that write's (it sees the write);
//! 2. **no going back** — a read invoked after another read completed answers an index at
//!    least the other's;
//! 3. **one state per index** — every read answering the same index saw the same state.
//!
//! (A read cannot answer a future index: indexes exist only once entries are appended. Writes
//! whose outcome the client never learned do not constrain reads, and neither do refused
//! ones.) The check is O((W + R) log(W + R)): prefix maxima over the events sorted by time, no
//! search over orderings as general checkers (Wing–Gong, Porcupine) need.
//!
//! Time is the simulator's global time, never a member's (skewed) clock. Invocation and
//! completion are taken at the client, outside the call, so they bracket the real call; equal
//! milliseconds count as concurrent (strict `<` everywhere), which can only hide a violation,
//! never invent one.

use std::collections::BTreeMap;

/// A write the client saw acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedWrite {
    pub id: String,
    /// The write's log index.
    pub index: u64,
    /// When the client learned of the acknowledgement (simulated ms).
    pub acked_at_ms: u64,
}

/// A read that returned a state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedRead {
    pub id: String,
    /// Which member answered (for the evidence).
    pub member: usize,
    pub invoked_at_ms: u64,
    pub completed_at_ms: u64,
    /// The applied index of the state the read returned.
    pub index: u64,
    /// A hash of the state the read returned.
    pub state_hash: u64,
}

/// Every violation of rules 1–3, one line of evidence each (at most one per read and rule).
pub fn check(writes: &[AckedWrite], reads: &[ObservedRead]) -> Vec<String> {
    let mut violations = Vec::new();

    // Rule 1: the highest-index write acknowledged strictly before each read was invoked.
    let mut by_ack: Vec<&AckedWrite> = writes.iter().collect();
    by_ack.sort_by_key(|w| (w.acked_at_ms, w.index));
    let mut best: Vec<&AckedWrite> = Vec::with_capacity(by_ack.len());
    for write in &by_ack {
        let keep = match best.last() {
            Some(previous) if previous.index >= write.index => *previous,
            _ => *write,
        };
        best.push(keep);
    }
    // Rule 2: the highest-index read completed strictly before each read was invoked.
    let mut by_completion: Vec<&ObservedRead> = reads.iter().collect();
    by_completion.sort_by_key(|r| (r.completed_at_ms, r.index));
    let mut best_read: Vec<&ObservedRead> = Vec::with_capacity(by_completion.len());
    for read in &by_completion {
        let keep = match best_read.last() {
            Some(previous) if previous.index >= read.index => *previous,
            _ => *read,
        };
        best_read.push(keep);
    }

    let mut state_at: BTreeMap<u64, &ObservedRead> = BTreeMap::new();
    for read in reads {
        let acked_before = by_ack.partition_point(|w| w.acked_at_ms < read.invoked_at_ms);
        if acked_before > 0 {
            let write = best[acked_before - 1];
            if write.index > read.index {
                violations.push(format!(
                    "stale read: read {} at meta-{} invoked at {} ms answered index {}, but write {} was acknowledged at {} ms with index {}",
                    read.id, read.member, read.invoked_at_ms, read.index, write.id, write.acked_at_ms, write.index
                ));
            }
        }
        let completed_before =
            by_completion.partition_point(|r| r.completed_at_ms < read.invoked_at_ms);
        if completed_before > 0 {
            let earlier = best_read[completed_before - 1];
            if earlier.index > read.index {
                violations.push(format!(
                    "read went back: read {} at meta-{} invoked at {} ms answered index {}, but read {} at meta-{} completed at {} ms had answered index {}",
                    read.id, read.member, read.invoked_at_ms, read.index, earlier.id, earlier.member, earlier.completed_at_ms, earlier.index
                ));
            }
        }
        match state_at.get(&read.index) {
            Some(first) if first.state_hash != read.state_hash => violations.push(format!(
                "two states at index {}: read {} at meta-{} saw state {:016x}, read {} at meta-{} saw {:016x}",
                read.index, first.id, first.member, first.state_hash, read.id, read.member, read.state_hash
            )),
            Some(_) => {}
            None => {
                state_at.insert(read.index, read);
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, index: u64, acked_at_ms: u64) -> AckedWrite {
        AckedWrite {
            id: id.into(),
            index,
            acked_at_ms,
        }
    }

    fn r(
        id: &str,
        invoked_at_ms: u64,
        completed_at_ms: u64,
        index: u64,
        state_hash: u64,
    ) -> ObservedRead {
        ObservedRead {
            id: id.into(),
            member: 0,
            invoked_at_ms,
            completed_at_ms,
            index,
            state_hash,
        }
    }

    /// One history and the rules it breaks (by the evidence's first words), in order.
    fn check_case(name: &str, writes: &[AckedWrite], reads: &[ObservedRead], expected: &[&str]) {
        let found = check(writes, reads);
        let kinds: Vec<&str> = found
            .iter()
            .map(|line| line.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(kinds, expected, "{name}: {found:#?}");
    }

    #[test]
    fn histories() {
        // Linearizable histories.
        check_case("empty", &[], &[], &[]);
        check_case(
            "read after ack sees it",
            &[w("a", 5, 100)],
            &[r("x", 101, 110, 5, 1)],
            &[],
        );
        check_case(
            "read after ack sees more",
            &[w("a", 5, 100)],
            &[r("x", 101, 110, 9, 1)],
            &[],
        );
        check_case(
            "concurrent read may miss the write",
            &[w("a", 5, 100)],
            &[r("x", 90, 120, 4, 1)],
            &[],
        );
        check_case(
            "same millisecond counts as concurrent",
            &[w("a", 5, 100)],
            &[r("x", 100, 120, 4, 1)],
            &[],
        );
        check_case(
            "overlapping reads may disagree in either order",
            &[],
            &[r("x", 10, 50, 7, 7), r("y", 20, 40, 6, 6)],
            &[],
        );
        check_case(
            "a later write with a lower index does not hide an earlier higher one",
            &[w("a", 9, 100), w("b", 3, 150)],
            &[r("x", 200, 210, 9, 1)],
            &[],
        );
        // Rule 1.
        check_case(
            "stale read",
            &[w("a", 5, 100)],
            &[r("x", 101, 110, 4, 1)],
            &["stale read"],
        );
        check_case(
            "stale against the highest earlier write, not the latest",
            &[w("a", 9, 100), w("b", 3, 150)],
            &[r("x", 200, 210, 8, 1)],
            &["stale read"],
        );
        // Rule 2.
        check_case(
            "read went back",
            &[],
            &[r("x", 10, 20, 7, 7), r("y", 21, 30, 6, 6)],
            &["read went back"],
        );
        // Rule 3.
        check_case(
            "two states at one index",
            &[],
            &[r("x", 10, 20, 7, 1), r("y", 10, 20, 7, 2)],
            &["two states at index 7"],
        );
        check_case(
            "all three at once",
            &[w("a", 5, 100)],
            &[
                r("x", 10, 20, 6, 1),
                r("y", 101, 110, 4, 2),
                r("z", 30, 40, 6, 3),
            ],
            &["stale read", "read went back", "two states at index 6"],
        );
    }
}
