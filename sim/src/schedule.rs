//! Fault schedules: a serializable list of timed fault events drawn from the seed.
//!
//! The schedule is drawn before the run starts, from its own RNG stream, so it does not depend
//! on what the run does; it is printed (JSON) with every failure, and `--schedule FILE` replays
//! a pinned one, because a seed alone stops reproducing a bug once any change shifts the RNG.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sextant_core::determinism::DeterministicRng;

use crate::config::{Scenario, SimConfig};

/// The kinds of fault, as named on the command line (`--faults crash,eio,clog`) and in the
/// coverage report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    Crash,
    Pause,
    Eio,
    Enospc,
    Corrupt,
    Slow,
    Jump,
    Clog,
    /// Metadata scenario: one raft member cut off from the other members (both ways).
    Partition,
    /// Replicated scenario: a node's disk is lost for good; the machine returns empty under a
    /// new member id and the operator replaces the old member.
    Wipe,
}

impl FaultKind {
    /// Every kind, for parsing and reports.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::Eio,
        FaultKind::Enospc,
        FaultKind::Corrupt,
        FaultKind::Slow,
        FaultKind::Jump,
        FaultKind::Clog,
        FaultKind::Partition,
        FaultKind::Wipe,
    ];

    /// The kinds the single-node (ingest) scenarios can inject; `mixed` draws from all of them.
    pub const INGEST: [FaultKind; 8] = [
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::Eio,
        FaultKind::Enospc,
        FaultKind::Corrupt,
        FaultKind::Slow,
        FaultKind::Jump,
        FaultKind::Clog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::Eio => "eio",
            FaultKind::Enospc => "enospc",
            FaultKind::Corrupt => "corrupt",
            FaultKind::Slow => "slow",
            FaultKind::Jump => "jump",
            FaultKind::Clog => "clog",
            FaultKind::Partition => "partition",
            FaultKind::Wipe => "wipe",
        }
    }

    /// The kinds a scenario draws from when `--faults` is not given.
    pub fn defaults(scenario: Scenario) -> BTreeSet<FaultKind> {
        use FaultKind::*;
        let kinds: &[FaultKind] = match scenario {
            Scenario::Steady => &[],
            Scenario::Crash => &[Crash, Pause, Clog],
            Scenario::Disk => &[Crash, Eio, Enospc, Corrupt, Slow],
            Scenario::Skew => &[Jump, Clog, Pause],
            Scenario::Bomb => &[Crash, Clog],
            Scenario::Mixed => &FaultKind::INGEST,
            Scenario::Metadata => &[Crash, Pause, Partition, Jump],
            // `wipe` is opt-in (`--faults …,wipe`) until the failures it finds are fixed
            // (docs/design/simulation.md § Wiped disks).
            Scenario::Replicated => &[Crash, Pause, Partition, Clog, Jump, Eio, Enospc, Corrupt, Slow],
        };
        kinds.iter().copied().collect()
    }

    /// Parses `crash,eio,...` (or `none`).
    pub fn parse_list(text: &str) -> Result<BTreeSet<FaultKind>, String> {
        if text.trim() == "none" || text.trim().is_empty() {
            return Ok(BTreeSet::new());
        }
        text.split(',').map(|part| part.trim().parse()).collect()
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == text)
            .ok_or_else(|| format!("unknown fault kind {text:?}; known: {}", FaultKind::ALL.map(|k| k.name()).join(", ")))
    }
}

/// What a crash does to the node's unsynced bytes (`sextant_storage::fs::sim::CrashMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrashKind {
    Torn,
    DropUnsynced,
}

/// One fault. Faults with a duration are undone by the runner when it ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fault {
    /// Kill the node process, cut the power of its disk, restart it after `down_ms`.
    Crash { node: usize, mode: CrashKind, down_ms: u64 },
    /// Stop scheduling the node's tasks (a GC pause, a SIGSTOP).
    Pause { node: usize, duration_ms: u64 },
    /// File fsyncs fail with EIO with this probability (the WAL must poison itself).
    SyncEio { node: usize, probability: f64, duration_ms: u64 },
    /// The disk fills up: capacity = bytes used when the fault starts + `headroom_bytes`.
    NoSpace { node: usize, headroom_bytes: u64, duration_ms: u64 },
    /// Reads return one flipped bit with this probability (transient: only while the node runs).
    CorruptReads { node: usize, probability: f64, duration_ms: u64 },
    /// Every disk operation sleeps up to `delay_ms_max`.
    SlowDisk { node: usize, delay_ms_max: u64, duration_ms: u64 },
    /// The node's wall clock steps by `delta_ms` (NTP step, VM migration); monotonic does not.
    ClockJump { node: usize, delta_ms: i64 },
    /// The network link between a writer and a node drops everything, both ways.
    Clog { writer: usize, node: usize, duration_ms: u64 },
    /// Metadata scenario: every link between raft member `node` and the other members drops
    /// everything, both ways (a minority isolated; when `node` leads, an isolated leader).
    Partition { node: usize, duration_ms: u64 },
    /// Metadata scenario: like `Crash`, aimed at whichever member leads when it fires (`node`
    /// when no live member knows a leader then).
    CrashLeader { node: usize, mode: CrashKind, down_ms: u64 },
    /// Replicated scenario: kill the node and lose its disk; after `down_ms` the machine boots
    /// empty as a new member (`--join`), and the operator adds it, drains and removes the lost
    /// member, abandons merges only it could complete and rebalances.
    Wipe { node: usize, down_ms: u64 },
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Crash { .. } => FaultKind::Crash,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::SyncEio { .. } => FaultKind::Eio,
            Fault::NoSpace { .. } => FaultKind::Enospc,
            Fault::CorruptReads { .. } => FaultKind::Corrupt,
            Fault::SlowDisk { .. } => FaultKind::Slow,
            Fault::ClockJump { .. } => FaultKind::Jump,
            Fault::Clog { .. } => FaultKind::Clog,
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::CrashLeader { .. } => FaultKind::Crash,
            Fault::Wipe { .. } => FaultKind::Wipe,
        }
    }

    pub fn node(&self) -> usize {
        match *self {
            Fault::Crash { node, .. }
            | Fault::Pause { node, .. }
            | Fault::SyncEio { node, .. }
            | Fault::NoSpace { node, .. }
            | Fault::CorruptReads { node, .. }
            | Fault::SlowDisk { node, .. }
            | Fault::ClockJump { node, .. }
            | Fault::Clog { node, .. }
            | Fault::Partition { node, .. }
            | Fault::CrashLeader { node, .. }
            | Fault::Wipe { node, .. } => node,
        }
    }

    /// How long the fault lasts (0 for instantaneous ones).
    pub fn duration_ms(&self) -> u64 {
        match *self {
            Fault::Crash { down_ms, .. } | Fault::CrashLeader { down_ms, .. } | Fault::Wipe { down_ms, .. } => down_ms,
            Fault::Pause { duration_ms, .. }
            | Fault::SyncEio { duration_ms, .. }
            | Fault::NoSpace { duration_ms, .. }
            | Fault::CorruptReads { duration_ms, .. }
            | Fault::SlowDisk { duration_ms, .. }
            | Fault::Clog { duration_ms, .. }
            | Fault::Partition { duration_ms, .. } => duration_ms,
            Fault::ClockJump { .. } => 0,
        }
    }
}

/// A fault at a simulated time (milliseconds since the run started).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    pub at_ms: u64,
    pub fault: Fault,
}

/// Everything about a run that is drawn from the seed before it starts: the nodes' clocks and
/// the fault events, in time order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Fixed wall-clock offset of each node from true time.
    pub node_skew_ms: Vec<i64>,
    /// Drift of each node's clocks, parts per million (positive: runs fast).
    pub node_drift_ppm: Vec<i64>,
    pub events: Vec<FaultEvent>,
}

/// Fault events drawn per simulated minute of the fault phase.
const EVENTS_PER_MINUTE_MAX: u64 = 8;

impl Schedule {
    /// Draws the schedule of `config` from its seed, using only `kinds`.
    ///
    /// Rules that keep every injected fault inside the fault model (docs/design/simulation.md):
    /// a node is not crashed while its reads are being corrupted (so corrupt reads never
    /// meet WAL replay, where a flipped bit is indistinguishable from rot of acknowledged
    /// data, which a single node cannot survive); every fault ends before the quiet phase.
    pub fn draw(config: &SimConfig, kinds: &BTreeSet<FaultKind>) -> Schedule {
        let mut rng = DeterministicRng::from_seed(config.seed).fork("schedule");
        let node_skew_ms = (0..config.nodes).map(|_| rng.gen_range(-config.clock_skew_ms_max..=config.clock_skew_ms_max)).collect();
        let node_drift_ppm = (0..config.nodes).map(|_| rng.gen_range(-config.clock_drift_ppm_max..=config.clock_drift_ppm_max)).collect();
        let kinds: Vec<FaultKind> = kinds.iter().copied().collect();
        let mut events: Vec<FaultEvent> = Vec::new();
        if !kinds.is_empty() {
            let count_max = (EVENTS_PER_MINUTE_MAX * config.fault_phase_ms / 60_000).max(1);
            let count = rng.gen_range(1..=count_max);
            // Faults start in the first 80% of the phase and end before it is over.
            let start_max = config.fault_phase_ms * 4 / 5;
            for _ in 0..count {
                let mut at_ms = rng.gen_range(1_000..=start_max.max(1_001));
                let node = rng.gen_range(0..config.nodes);
                let room_ms = config.fault_phase_ms - at_ms;
                let duration_ms = rng.gen_range(500..=room_ms.clamp(501, 15_000));
                let fault = match kinds[rng.gen_range(0..kinds.len())] {
                    FaultKind::Crash => Fault::Crash {
                        node,
                        mode: if rng.gen_bool(0.5) { CrashKind::Torn } else { CrashKind::DropUnsynced },
                        down_ms: rng.gen_range(10..=room_ms.clamp(11, 5_000)),
                    },
                    FaultKind::Pause => Fault::Pause {
                        node,
                        duration_ms: duration_ms.min(10_000),
                    },
                    FaultKind::Eio => Fault::SyncEio {
                        node,
                        probability: [0.05, 0.3, 1.0][rng.gen_range(0..3)],
                        duration_ms,
                    },
                    FaultKind::Enospc => Fault::NoSpace {
                        node,
                        headroom_bytes: rng.gen_range(0..=64 * 1024),
                        duration_ms,
                    },
                    FaultKind::Corrupt => Fault::CorruptReads {
                        node,
                        probability: [0.01, 0.1, 0.5][rng.gen_range(0..3)],
                        duration_ms,
                    },
                    FaultKind::Slow => Fault::SlowDisk {
                        node,
                        delay_ms_max: rng.gen_range(1..=2_000),
                        duration_ms,
                    },
                    FaultKind::Jump => {
                        // Steps within the acceptance bounds' order of magnitude, both ways.
                        let delta_ms = rng.gen_range(-15 * 60_000..=15 * 60_000);
                        Fault::ClockJump { node, delta_ms }
                    }
                    // Only the metadata and replicated scenarios have members to cut apart; a
                    // single-node run given `--faults partition` records it as not applicable.
                    FaultKind::Partition => Fault::Partition { node, duration_ms },
                    FaultKind::Clog => Fault::Clog {
                        writer: rng.gen_range(0..config.writers.max(1)),
                        node,
                        duration_ms,
                    },
                    // In the first half of the phase: the operator's replacement of the lost
                    // member (promotions, catch-up syncs) then ends with the faults.
                    FaultKind::Wipe => {
                        at_ms = at_ms.min(config.fault_phase_ms / 2);
                        Fault::Wipe {
                            node,
                            down_ms: rng.gen_range(10..=5_000),
                        }
                    }
                };
                events.push(FaultEvent { at_ms, fault });
            }
        }
        events.sort_by_key(|e| e.at_ms);
        let events = drop_clashing_faults(events);
        Schedule { node_skew_ms, node_drift_ppm, events }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a schedule serializes")
    }

    pub fn from_json(text: &str) -> Result<Schedule, String> {
        serde_json::from_str(text).map_err(|e| format!("schedule JSON: {e}"))
    }

    /// When the last fault is over.
    pub fn faults_end_ms(&self) -> u64 {
        self.events.iter().map(|e| e.at_ms + e.fault.duration_ms()).max().unwrap_or(0)
    }
}

fn is_process_fault(fault: &Fault) -> bool {
    matches!(fault, Fault::Crash { .. } | Fault::CrashLeader { .. } | Fault::Pause { .. } | Fault::Wipe { .. })
}

/// How long after a crash or pause of a node ends its disk may be wiped. A primary that was
/// down or frozen could not stream meanwhile, so what it acknowledged just before is older
/// than `L` when the disk goes: the loss bound is about the primary's running time, and the
/// oracle measures it in simulated time (docs/design/simulation.md § Wiped disks).
pub const WIPE_AFTER_PROCESS_FAULT_MS_MIN: u64 = 20_000;

fn overlaps(a: &FaultEvent, b: &FaultEvent) -> bool {
    a.at_ms <= b.at_ms + b.fault.duration_ms() && b.at_ms <= a.at_ms + a.fault.duration_ms()
}

/// Removes crashes that would overlap corrupt reads on the same node, and process faults
/// (crash, pause, wipe) that would overlap an earlier process fault of the same node: a node is
/// never paused while down, nor crashed while paused. Keeps at most one wipe per run (a second
/// disk lost before the first is re-replicated is outside RF=2's promise), and none within
/// [`WIPE_AFTER_PROCESS_FAULT_MS_MIN`] after a crash or pause of its node ends.
pub(crate) fn drop_clashing_faults(events: Vec<FaultEvent>) -> Vec<FaultEvent> {
    let mut kept: Vec<FaultEvent> = Vec::new();
    for event in events {
        let node = event.fault.node();
        let same_node = |e: &&FaultEvent| e.fault.node() == node && overlaps(e, &event);
        let clash = match event.fault {
            Fault::Crash { .. } | Fault::CrashLeader { .. } => kept.iter().filter(same_node).any(|e| matches!(e.fault, Fault::CorruptReads { .. }) || is_process_fault(&e.fault)),
            Fault::Pause { .. } => kept.iter().filter(same_node).any(|e| is_process_fault(&e.fault)),
            Fault::CorruptReads { .. } => kept.iter().filter(same_node).any(|e| matches!(e.fault, Fault::Crash { .. })),
            Fault::Wipe { .. } => {
                let recent = |e: &FaultEvent| e.fault.node() == node && is_process_fault(&e.fault) && e.at_ms <= event.at_ms + event.fault.duration_ms() && event.at_ms < e.at_ms + e.fault.duration_ms() + WIPE_AFTER_PROCESS_FAULT_MS_MIN;
                kept.iter().any(|e| matches!(e.fault, Fault::Wipe { .. })) || kept.iter().any(recent)
            }
            _ => false,
        };
        if !clash {
            kept.push(event);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a schedule is a function of the seed, round-trips through JSON, ends before the
    // quiet phase, and never crashes a node while its reads are corrupted.
    #[test]
    fn schedules_are_reproducible_and_well_formed() {
        for seed in 0..200u64 {
            let config = SimConfig::new(seed, Scenario::Mixed);
            let kinds = FaultKind::defaults(Scenario::Mixed);
            let a = Schedule::draw(&config, &kinds);
            assert_eq!(a, Schedule::draw(&config, &kinds), "seed {seed}");
            assert_eq!(Schedule::from_json(&a.to_json()).unwrap(), a, "seed {seed}");
            assert!(a.faults_end_ms() <= config.fault_phase_ms, "seed {seed}: faults end at {}", a.faults_end_ms());
            for crash in a.events.iter().filter(|e| e.fault.kind() == FaultKind::Crash) {
                for disk in a.events.iter().filter(|e| e.fault.kind() == FaultKind::Corrupt && e.fault.node() == crash.fault.node()) {
                    let overlap = crash.at_ms <= disk.at_ms + disk.fault.duration_ms() && disk.at_ms <= crash.at_ms + crash.fault.duration_ms();
                    assert!(!overlap, "seed {seed}: {crash:?} overlaps {disk:?}");
                }
            }
        }
    }

    // Goal: a run loses at most one disk, and never right after a crash or pause of the same
    // machine (its unstreamed acknowledgements would then be older than the loss bound).
    // Method: a crash of node 0, then wipes of node 0 too soon, of node 1, and of node 2.
    #[test]
    fn wipes_are_single_and_not_right_after_a_process_fault() {
        let at = |at_ms: u64, fault: Fault| FaultEvent { at_ms, fault };
        let events = vec![
            at(1_000, Fault::Crash { node: 0, mode: CrashKind::Torn, down_ms: 2_000 }),
            at(10_000, Fault::Wipe { node: 0, down_ms: 100 }),
            at(12_000, Fault::Wipe { node: 1, down_ms: 100 }),
            at(14_000, Fault::Wipe { node: 2, down_ms: 100 }),
            at(30_000, Fault::Wipe { node: 0, down_ms: 100 }),
        ];
        let kept: Vec<(u64, usize)> = drop_clashing_faults(events).iter().map(|e| (e.at_ms, e.fault.node())).collect();
        assert_eq!(kept, vec![(1_000, 0), (12_000, 1)]);
        let late = vec![at(1_000, Fault::Crash { node: 0, mode: CrashKind::Torn, down_ms: 2_000 }), at(23_001, Fault::Wipe { node: 0, down_ms: 100 })];
        assert_eq!(drop_clashing_faults(late).len(), 2, "20 s after the crash ended, a wipe is allowed");
    }

    // Goal: `--faults` parsing accepts the documented names and says what was wrong otherwise.
    #[test]
    fn fault_lists_parse() {
        fn check(input: &str, expected: Result<Vec<FaultKind>, &str>) {
            let got = FaultKind::parse_list(input).map(|set| set.into_iter().collect::<Vec<_>>());
            match expected {
                Ok(kinds) => assert_eq!(got, Ok(kinds), "{input}"),
                Err(fragment) => assert!(got.as_ref().is_err_and(|e| e.contains(fragment)), "{input}: {got:?}"),
            }
        }
        check("crash,eio", Ok(vec![FaultKind::Crash, FaultKind::Eio]));
        check("none", Ok(vec![]));
        check("clog, jump", Ok(vec![FaultKind::Jump, FaultKind::Clog]));
        check("crash,flood", Err("unknown fault kind \"flood\""));
    }

    // Goal: a scenario without faults draws none; `kinds` restricts what is drawn.
    #[test]
    fn kinds_restrict_the_draw() {
        for seed in 0..50u64 {
            let config = SimConfig::new(seed, Scenario::Mixed);
            assert!(Schedule::draw(&config, &BTreeSet::new()).events.is_empty());
            let only: BTreeSet<FaultKind> = [FaultKind::Clog].into_iter().collect();
            assert!(Schedule::draw(&config, &only).events.iter().all(|e| e.fault.kind() == FaultKind::Clog));
        }
    }
}
