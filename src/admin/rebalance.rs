//! `sextant admin rebalance`: the plan (pure, here) and the steps that apply it (`cli.rs`,
//! through the admin RPCs). docs/design/replication.md § Rebalancing.
//!
//! The plan spreads primaries, then secondaries, evenly over the voters with as few moves as
//! possible: each voter's target count is ⌊shards / voters⌋ or one more (the voters holding
//! most today get the larger targets), a shard keeps its primary (secondary) while that node is
//! a voter under its target, and a freed shard goes to its current secondary when that voter has
//! room (a promotion, no copy), else to the voter with the most room (lowest id on ties) —
//! except when its primary is leaving (drained), where it always goes to its secondary, the one
//! copy a possibly dead primary cannot have to stream from.
//! Secondaries prefer the shard's previous primary when it is a voter with room (it holds the
//! data already). Everything iterates `BTreeMap`s: the plan is a function of its input.

use std::collections::{BTreeMap, BTreeSet};

/// One shard's replicas: (primary, secondary).
pub type Replicas = (Option<u64>, Option<u64>);

/// One shard's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub shard: u32,
    pub from: Replicas,
    pub to: Replicas,
}

impl Move {
    /// The admin steps that carry the move out, in order, each waited for before the next:
    /// a new primary that is not the current secondary is first made the secondary (and caught
    /// up by the stream's sync); then the secondary is promoted (the old primary becomes the
    /// secondary, merge-back); then the final secondary is set (and caught up).
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let (mut primary, mut secondary) = self.from;
        if self.to.0 != primary {
            if let Some(target) = self.to.0 {
                if secondary != Some(target) {
                    steps.push(Step::SetSecondary(target));
                    secondary = Some(target);
                }
                steps.push(Step::Promote);
                std::mem::swap(&mut primary, &mut secondary);
            }
        }
        if let Some(target) = self.to.1 {
            if secondary != Some(target) {
                steps.push(Step::SetSecondary(target));
            }
        }
        steps
    }
}

/// One admin step of a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `shards set-secondary SHARD NODE`, then wait until the primary streams to it, synced.
    SetSecondary(u64),
    /// `shards promote SHARD`, then wait until the merge-back completed (merge pending clear).
    Promote,
}

/// Each voter's target count of `shards` roles: ⌊shards / n⌋, plus one for the `shards % n`
/// voters that hold most today (ties: lowest id).
fn targets(shards: usize, voters: &[u64], held: &BTreeMap<u64, usize>) -> BTreeMap<u64, usize> {
    let n = voters.len();
    let mut order: Vec<u64> = voters.to_vec();
    order.sort_by_key(|v| (std::cmp::Reverse(held.get(v).copied().unwrap_or(0)), *v));
    order.iter().enumerate().map(|(rank, v)| (*v, shards / n + usize::from(rank < shards % n))).collect()
}

/// The voter holding the fewest of `assigned` (lowest id on ties).
fn least_loaded(voters: &[u64], assigned: &BTreeMap<u32, u64>) -> u64 {
    *voters.iter().min_by_key(|v| (assigned.values().filter(|a| a == v).count(), **v)).expect("two or more voters")
}

/// The voter with the most room left (lowest id on ties), other than `except`.
fn roomiest(room: &BTreeMap<u64, usize>, except: Option<u64>) -> Option<u64> {
    room.iter().filter(|(v, r)| **r > 0 && Some(**v) != except).max_by_key(|(v, r)| (**r, std::cmp::Reverse(**v))).map(|(v, _)| *v)
}

/// The moves that balance `map` over `voters` (ids; order irrelevant). Shards in `pinned`
/// keep their primary (a merge-back is pending: promoting again would replace the pending
/// merge and lose track of it), even past its target; the others balance around them. Fewer
/// than two voters: no moves (RF=2 needs two nodes; the CLI refuses to rebalance then).
pub fn plan(map: &BTreeMap<u32, Replicas>, voters: &[u64], pinned: &BTreeSet<u32>) -> Vec<Move> {
    plan_with(map, voters, pinned, &BTreeSet::new())
}

/// [`plan`], knowing which shards' primaries hold no live lease (`unleased`: dead, or not
/// known alive). Such a shard whose primary must move goes to its secondary whatever that
/// node's room: moving it to a third node would first make that node the secondary, replacing
/// the one live copy with an empty node that a dead primary cannot catch up (found by the
/// replicated simulation's wipe fault). A later `rebalance --apply` evens the count out.
pub fn plan_with(map: &BTreeMap<u32, Replicas>, voters: &[u64], pinned: &BTreeSet<u32>, unleased: &BTreeSet<u32>) -> Vec<Move> {
    let mut voters: Vec<u64> = voters.to_vec();
    voters.sort_unstable();
    voters.dedup();
    if voters.len() < 2 || map.is_empty() {
        return Vec::new();
    }
    let is_voter = |node: Option<u64>| node.filter(|n| voters.binary_search(n).is_ok());
    let count = |pick: fn(&Replicas) -> Option<u64>| {
        let mut held = BTreeMap::new();
        for replicas in map.values() {
            if let Some(node) = is_voter(pick(replicas)) {
                *held.entry(node).or_insert(0usize) += 1;
            }
        }
        held
    };

    // Primaries.
    let mut room = targets(map.len(), &voters, &count(|r| r.0));
    let mut primary: BTreeMap<u32, u64> = BTreeMap::new();
    for (shard, (p, _)) in map.iter().filter(|(shard, _)| pinned.contains(shard)) {
        if let Some(p) = *p {
            if let Some(r) = room.get_mut(&p) {
                *r = r.saturating_sub(1);
            }
            primary.insert(*shard, p);
        }
    }
    for (shard, (p, _)) in map.iter().filter(|(shard, _)| !pinned.contains(shard)) {
        if let Some(p) = is_voter(*p) {
            if room[&p] > 0 {
                *room.get_mut(&p).unwrap() -= 1;
                primary.insert(*shard, p);
            }
        }
    }
    for (shard, (p, s)) in map {
        if primary.contains_key(shard) {
            continue;
        }
        let chosen = match is_voter(*s) {
            Some(s) if room[&s] > 0 => s,
            // A primary without a live lease: only promoting the secondary keeps the data.
            Some(s) if unleased.contains(shard) && *p != Some(s) => s,
            // No room anywhere only when pinned shards overfill a voter: the least loaded.
            _ => roomiest(&room, None).unwrap_or_else(|| least_loaded(&voters, &primary)),
        };
        if let Some(r) = room.get_mut(&chosen) {
            *r = r.saturating_sub(1);
        }
        primary.insert(*shard, chosen);
    }

    // Secondaries.
    let mut secondary: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    {
        let mut room = targets(map.len(), &voters, &count(|r| r.1));
        for (shard, (_, s)) in map {
            if let Some(s) = is_voter(*s) {
                if s != primary[shard] && room[&s] > 0 {
                    *room.get_mut(&s).unwrap() -= 1;
                    secondary.insert(*shard, Some(s));
                }
            }
        }
        for (shard, (p, _)) in map {
            if secondary.contains_key(shard) {
                continue;
            }
            let new_primary = primary[shard];
            let chosen = match is_voter(*p) {
                Some(p) if p != new_primary && room[&p] > 0 => Some(p),
                _ => roomiest(&room, Some(new_primary)),
            };
            if let Some(chosen) = chosen {
                *room.get_mut(&chosen).unwrap() -= 1;
                secondary.insert(*shard, Some(chosen));
                continue;
            }
            // Only this shard's own primary has room left. Give that room to a shard already
            // placed whose primary is another node, and take over its secondary (one swap).
            let roomy = roomiest(&room, None).expect("targets add up to the shard count");
            let swap = secondary.iter().find(|(k, x)| x.is_some_and(|x| x != new_primary) && primary[*k] != roomy).map(|(k, x)| (*k, x.unwrap()));
            let Some((other, taken)) = swap else {
                // Nothing to swap with (tiny maps): any other voter, balance aside.
                secondary.insert(*shard, voters.iter().copied().find(|v| *v != new_primary));
                continue;
            };
            *room.get_mut(&roomy).unwrap() -= 1;
            secondary.insert(other, Some(roomy));
            secondary.insert(*shard, Some(taken));
        }
    }

    map.iter()
        .filter_map(|(shard, from)| {
            let to = (Some(primary[shard]), secondary.get(shard).copied().flatten());
            (to != *from).then_some(Move { shard: *shard, from: *from, to })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(u64, u64)]) -> BTreeMap<u32, Replicas> {
        entries.iter().enumerate().map(|(i, (p, s))| (i as u32, (Some(*p), Some(*s)))).collect()
    }

    /// The map after applying `moves`.
    fn apply(map: &BTreeMap<u32, Replicas>, moves: &[Move]) -> BTreeMap<u32, Replicas> {
        let mut out = map.clone();
        for m in moves {
            assert_eq!(out[&m.shard], m.from);
            out.insert(m.shard, m.to);
        }
        out
    }

    fn counts(map: &BTreeMap<u32, Replicas>, pick: fn(&Replicas) -> Option<u64>) -> BTreeMap<u64, usize> {
        let mut c = BTreeMap::new();
        for r in map.values() {
            if let Some(n) = pick(r) {
                *c.entry(n).or_insert(0) += 1;
            }
        }
        c
    }

    // Goal: the plan balances primaries and secondaries over the voters within one, never makes
    // a node its own shard's secondary, leaves non-voters nothing, moves nothing when already
    // balanced, and is stable (planning again after applying it moves nothing).
    // Method: a table of (map, voters) → expected counts and number of moves, which is the
    // minimum: the shards that must change (a joining node needs its primaries and
    // secondaries on distinct shards; a leaving node's shards all move).
    #[test]
    fn plans_balance_with_few_moves() {
        // (name, map, voters, primaries per voter, secondaries per voter, moves)
        let round_robin_2 = map(&[(1, 2), (2, 1), (1, 2), (2, 1), (1, 2), (2, 1)]);
        let cases: Vec<(&str, BTreeMap<u32, Replicas>, Vec<u64>, Vec<(u64, usize)>, Vec<(u64, usize)>, usize)> = vec![
            ("balanced stays", round_robin_2.clone(), vec![1, 2], vec![(1, 3), (2, 3)], vec![(1, 3), (2, 3)], 0),
            // Node 3 added: it takes two primaries and two secondaries.
            ("node added", round_robin_2.clone(), vec![1, 2, 3], vec![(1, 2), (2, 2), (3, 2)], vec![(1, 2), (2, 2), (3, 2)], 4),
            // Node 2 removed from three: its primaries are promoted where its secondary is.
            ("node removed", map(&[(1, 2), (2, 3), (3, 1), (1, 2), (2, 3), (3, 1)]), vec![1, 3], vec![(1, 3), (3, 3)], vec![(1, 3), (3, 3)], 4),
            // 16 shards over three voters: 6/5/5.
            ("uneven", (0..16).map(|i| (i as u32, (Some(1 + i as u64 % 2), Some(2 - i as u64 % 2)))).collect(), vec![1, 2, 3], vec![(1, 6), (2, 5), (3, 5)], vec![(1, 6), (2, 5), (3, 5)], 10),
        ];
        for (name, before, voters, primaries, secondaries, moves_expected) in cases {
            let moves = plan(&before, &voters, &BTreeSet::new());
            let after = apply(&before, &moves);
            assert_eq!(counts(&after, |r| r.0), primaries.into_iter().collect(), "{name}: primaries");
            assert_eq!(counts(&after, |r| r.1), secondaries.into_iter().collect(), "{name}: secondaries");
            assert!(after.values().all(|(p, s)| p != s), "{name}: a shard's secondary is another node: {after:?}");
            assert_eq!(moves.len(), moves_expected, "{name}: {moves:?}");
            assert_eq!(plan(&after, &voters, &BTreeSet::new()), vec![], "{name}: planning again moves nothing");
        }
        assert_eq!(plan(&round_robin_2, &[1], &BTreeSet::new()), vec![], "one voter: nothing to balance onto");
    }

    // Goal: pinned shards (merge pending) keep their primary, even past its target, and the
    // others balance around them; their secondary may still move. Method: node 3 drained from
    // a map where node 1 holds pinned primaries.
    #[test]
    fn pinned_shards_keep_their_primary() {
        // Node 3 was lost: shards 2 and 5 were promoted to node 1 (merge pending from 3).
        let before = map(&[(1, 2), (2, 3), (1, 3), (3, 1), (2, 3), (1, 3)]);
        let pinned: BTreeSet<u32> = [2, 5].into();
        let moves = plan(&before, &[1, 2], &pinned);
        let after = apply(&before, &moves);
        for shard in &pinned {
            assert_eq!(after[shard].0, before[shard].0, "shard {shard} keeps its primary: {moves:?}");
        }
        assert!(after.values().all(|(p, s)| *p != Some(3) && *s != Some(3) && p != s), "{after:?}");
        assert_eq!(counts(&after, |r| r.0), [(1, 3), (2, 3)].into(), "{after:?}");
        // Three pinned on node 1 of four shards over two voters: node 1 is over its target of
        // two; the rest go to node 2.
        let crowded = map(&[(1, 2), (1, 2), (1, 2), (2, 1)]);
        let after = apply(&crowded, &plan(&crowded, &[1, 2], &[0, 1, 2].into()));
        assert_eq!(counts(&after, |r| r.0), [(1, 3), (2, 1)].into(), "{after:?}");
    }

    // Goal: a drained primary's shard is promoted to its secondary even past that node's
    // target, never moved to a third node first: its first step would replace the secondary,
    // the one copy left when the drained node is dead (the replicated simulation's wipe fault:
    // shard 1 went to the empty replacement node, and every acknowledged sample of it with it).
    // Method: node 2 (lost) is primary of shards 0 and 1 whose secondary, node 3, is already
    // at its target; node 4 (the replacement) has room.
    #[test]
    fn a_drained_primary_is_replaced_by_its_secondary() {
        let before = map(&[(2, 3), (2, 3), (3, 1), (1, 3)]);
        let moves = plan_with(&before, &[1, 3, 4], &BTreeSet::new(), &[0, 1].into());
        let after = apply(&before, &moves);
        for m in moves.iter().filter(|m| m.from.0 == Some(2)) {
            assert_eq!(m.steps().first(), Some(&Step::Promote), "shard {}: {moves:?}", m.shard);
        }
        assert_eq!((after[&0].0, after[&1].0), (Some(3), Some(3)), "{after:?}");
        assert!(after.values().all(|(p, s)| *p != Some(2) && *s != Some(2) && p != s), "{after:?}");
        // With its lease live (a drained node still running), a third node may take it.
        let live = plan(&before, &[1, 3, 4], &BTreeSet::new());
        assert!(live.iter().any(|m| m.from.0 == Some(2) && m.steps().first() != Some(&Step::Promote)), "{live:?}");
    }

    // Goal: a move's steps copy before they switch: a new primary is made the secondary first
    // (caught up), then promoted; the final secondary is set last; a swap is a bare promotion.
    // Method: a table of (from, to) → steps.
    #[test]
    fn steps_copy_before_switching() {
        use Step::*;
        let cases: Vec<(Replicas, Replicas, Vec<Step>)> = vec![
            ((Some(1), Some(2)), (Some(2), Some(1)), vec![Promote]),
            ((Some(1), Some(2)), (Some(1), Some(3)), vec![SetSecondary(3)]),
            ((Some(1), Some(2)), (Some(3), Some(1)), vec![SetSecondary(3), Promote]),
            ((Some(1), Some(2)), (Some(3), Some(2)), vec![SetSecondary(3), Promote, SetSecondary(2)]),
            ((Some(1), Some(2)), (Some(2), Some(3)), vec![Promote, SetSecondary(3)]),
            ((Some(1), Some(2)), (Some(1), Some(2)), vec![]),
        ];
        for (from, to, expected) in cases {
            assert_eq!(Move { shard: 0, from, to }.steps(), expected, "{from:?} → {to:?}");
        }
    }
}
