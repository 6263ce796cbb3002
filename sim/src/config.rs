//! What a simulated run is made of: the scenario, the scaled node configuration and the
//! workload sizes. Plain data, the same in both builds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A named mix of workload and faults. Every scenario ends with a quiet phase (no faults)
/// followed by the liveness and final oracles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scenario {
    /// Writers only, no faults: the oracles must hold on a healthy node.
    Steady,
    /// Crashes (torn and dropped unsynced writes) and pauses.
    Crash,
    /// Disk faults: fsync EIO, ENOSPC, corrupt reads, slow I/O, plus crashes.
    Disk,
    /// Per-node clock skew up to ±1 h, drift, forward/backward wall-clock jumps.
    Skew,
    /// A cardinality-bomb writer beside the normal writers, with crashes.
    Bomb,
    /// Everything above at once, at lower rates (what CI runs most).
    Mixed,
    /// The metadata raft group alone (sim/src/metadata.rs): three members over the real raft
    /// gRPC transport, clients proposing through any member, partitions, crashes (the leader
    /// too), pauses and clock jumps, a fourth member added by snapshot and one removed.
    Metadata,
    /// The whole data path as a cluster: three nodes, each the full `sextant serve` (the
    /// metadata member, RF=2 replication with leases, failover and merge-back, forwarding of
    /// writes and queries), writers sending to any node, with crashes, pauses, partitions
    /// between nodes and clogged client links.
    Replicated,
}

impl Scenario {
    /// Every scenario, for parsing.
    pub const ALL: [Scenario; 8] = [Scenario::Steady, Scenario::Crash, Scenario::Disk, Scenario::Skew, Scenario::Bomb, Scenario::Mixed, Scenario::Metadata, Scenario::Replicated];
    /// The single-node (ingest) scenarios that a seed without `--scenario` rotates through.
    /// `metadata` and `replicated` are not in the rotation: `ci/sim` runs their seeds as sweeps
    /// of their own, so the ingest seeds keep the scenario they always had.
    pub const ROTATION: [Scenario; 6] = [Scenario::Steady, Scenario::Crash, Scenario::Disk, Scenario::Skew, Scenario::Bomb, Scenario::Mixed];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Crash => "crash",
            Scenario::Disk => "disk",
            Scenario::Skew => "skew",
            Scenario::Bomb => "bomb",
            Scenario::Mixed => "mixed",
            Scenario::Metadata => "metadata",
            Scenario::Replicated => "replicated",
        }
    }

    /// The scenario CI's mix gives a seed that names none: seeds rotate through all of them.
    pub fn for_seed(seed: u64) -> Scenario {
        Scenario::ROTATION[(seed % Scenario::ROTATION.len() as u64) as usize]
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| format!("unknown scenario {text:?}; known: {}", Scenario::ALL.map(|s| s.name()).join(", ")))
    }
}

/// A bug planted in the node's configuration to prove the oracles catch it. Sim-only: it is a
/// flag of `sextant-sim`, never a setting of `sextant serve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PlantedBug {
    /// Acknowledge writes once written, fsync only every 10 s (the WAL's `interval` policy
    /// run where `always` is promised): acked samples die with the power.
    AckBeforeFsync,
    /// Metadata scenario: the raft log's segment files never reach the disk — every fsync of a
    /// `*.seg` file answers success and syncs nothing, so the log store tells openraft entries
    /// are durable (and the leader acknowledges writes) while they sit in the page cache. The
    /// same as a log store that signals completion before its fsync. Planted at the disk seam
    /// the simulator hands the member (sim/src/metadata.rs `UnsyncedLogFs`), so raft/'s real
    /// code path is untouched and nothing of it exists outside the simulator.
    RaftLogUnsynced,
    /// Metadata scenario: the readers' admin reads are served from the answering member's own
    /// applied copy (`local_read`) where a linearizable read (`linearizable_read`: the leader
    /// confirms its leadership with a quorum and waits to apply up to its commit index) was
    /// asked for — what an admin service that ignored `--consistency linearizable` would do.
    /// Planted in the simulator's reader, so raft/'s code is untouched.
    StaleAdminRead,
    /// `Bug::AckAfterLeaseLapsed` (replicated scenario). This variant and the ones below are
    /// planted in node or storage code behind `sextant_core::determinism::planted`, which
    /// documents each bug; here they only name it for `--plant`.
    AckAfterLeaseLapsed,
    /// `Bug::BlockDirFsyncSkipped` (ingest scenarios).
    BlockDirFsyncSkipped,
    /// `Bug::ReplicationAckedBeforeApply` (replicated scenario).
    ReplicationAckedBeforeApply,
    /// `Bug::ReplicaValueBitFlipped` (replicated scenario).
    ReplicaValueBitFlipped,
    /// `Bug::PartialWarningDropped` (replicated scenario).
    PartialWarningDropped,
    /// `Bug::SeriesLimitBypassedOnRestart` (ingest scenarios).
    SeriesLimitBypassedOnRestart,
    /// `Bug::SeriesLimitPerReceivingNode` (replicated scenario).
    SeriesLimitPerReceivingNode,
    /// `Bug::NondeterministicIteration` (any scenario; caught by running a seed twice).
    NondeterministicIteration,
    /// `Bug::SkewUnreported` (ingest scenarios).
    SkewUnreported,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 12] = [
        PlantedBug::AckBeforeFsync,
        PlantedBug::RaftLogUnsynced,
        PlantedBug::StaleAdminRead,
        PlantedBug::AckAfterLeaseLapsed,
        PlantedBug::BlockDirFsyncSkipped,
        PlantedBug::ReplicationAckedBeforeApply,
        PlantedBug::ReplicaValueBitFlipped,
        PlantedBug::PartialWarningDropped,
        PlantedBug::SeriesLimitBypassedOnRestart,
        PlantedBug::SeriesLimitPerReceivingNode,
        PlantedBug::NondeterministicIteration,
        PlantedBug::SkewUnreported,
    ];

    /// The bug in node or storage code this names, if it is one (the others are planted in
    /// the simulator's own code).
    pub fn in_code(self) -> Option<sextant_core::determinism::planted::Bug> {
        use sextant_core::determinism::planted::Bug;
        match self {
            PlantedBug::AckBeforeFsync | PlantedBug::RaftLogUnsynced | PlantedBug::StaleAdminRead => None,
            PlantedBug::AckAfterLeaseLapsed => Some(Bug::AckAfterLeaseLapsed),
            PlantedBug::BlockDirFsyncSkipped => Some(Bug::BlockDirFsyncSkipped),
            PlantedBug::ReplicationAckedBeforeApply => Some(Bug::ReplicationAckedBeforeApply),
            PlantedBug::ReplicaValueBitFlipped => Some(Bug::ReplicaValueBitFlipped),
            PlantedBug::PartialWarningDropped => Some(Bug::PartialWarningDropped),
            PlantedBug::SeriesLimitBypassedOnRestart => Some(Bug::SeriesLimitBypassedOnRestart),
            PlantedBug::SeriesLimitPerReceivingNode => Some(Bug::SeriesLimitPerReceivingNode),
            PlantedBug::NondeterministicIteration => Some(Bug::NondeterministicIteration),
            PlantedBug::SkewUnreported => Some(Bug::SkewUnreported),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::AckBeforeFsync => "ack-before-fsync",
            PlantedBug::RaftLogUnsynced => "raft-log-unsynced",
            PlantedBug::StaleAdminRead => "stale-admin-read",
            PlantedBug::AckAfterLeaseLapsed => "ack-after-lease-lapsed",
            PlantedBug::BlockDirFsyncSkipped => "block-dir-fsync-skipped",
            PlantedBug::ReplicationAckedBeforeApply => "replication-acked-before-apply",
            PlantedBug::ReplicaValueBitFlipped => "replica-value-bit-flipped",
            PlantedBug::PartialWarningDropped => "partial-warning-dropped",
            PlantedBug::SeriesLimitBypassedOnRestart => "series-limit-bypassed-on-restart",
            PlantedBug::SeriesLimitPerReceivingNode => "series-limit-per-receiving-node",
            PlantedBug::NondeterministicIteration => "nondeterministic-iteration",
            PlantedBug::SkewUnreported => "skew-unreported",
        }
    }
}

impl fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PlantedBug {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        PlantedBug::ALL
            .into_iter()
            .find(|b| b.name() == text)
            .ok_or_else(|| format!("unknown planted bug {text:?}; known: {}", PlantedBug::ALL.map(|b| b.name()).join(", ")))
    }
}

/// The configuration of one simulated run.
///
/// Sizes are scaled down from production so that a few simulated minutes exercise the paths
/// that take hours at default sizes (production default in brackets):
///
/// | setting | sim | production |
/// |---|---|---|
/// | `wal_segment_bytes` | 64 KiB: segments rotate every few seconds | 128 MiB |
/// | `block_span_ms` | 30 s: the head is cut into blocks and compacted within a run | 2 h |
/// | `maintain_interval_ms` | 2 s: head cuts, compaction, checkpoints run often | 60 s |
/// | `shards` | 4 | 16 |
/// | `series_per_metric_max` | twice a node's normal series + 128 (224 at default sizes; the bomb hits it in seconds) | 100,000 |
/// | `series_per_tenant_max` | 600, or four times a node's normal series + 256 if more | 1,000,000 |
/// | `memory_bytes_max` | 64 MiB | 4 GiB |
/// | retention | none: nothing is exempt from the durability oracles | 15 d |
/// | fsync policy | `always` (the durability oracle relies on it) | `always` |
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    pub seed: u64,
    pub scenario: Scenario,
    /// Sextant nodes: independent databases in the single-node scenarios, one cluster (raft
    /// members with replicated shards) in `replicated`.
    pub nodes: usize,
    /// Writer clients; writer `w` sends to node `w % nodes` (in `replicated`, that node
    /// forwards to each shard's primary).
    pub writers: usize,
    /// Series per writer: counters, gauges and one classic histogram (see `workload`).
    pub series_per_writer: usize,
    /// Scrape interval of the writers.
    pub write_interval_ms: u64,
    /// Simulated time during which faults may happen.
    pub fault_phase_ms: u64,
    /// Simulated time after the last fault before liveness is judged.
    pub quiet_phase_ms: u64,
    /// Bound on how long after the quiet phase a node may take to become ready and ack a write.
    pub liveness_ms_max: u64,
    /// Client request timeout.
    pub request_timeout_ms: u64,
    /// Retries of one batch after a retryable answer or a timeout (then it is given up).
    pub retries_max: u32,
    pub wal_segment_bytes: u64,
    pub block_span_ms: i64,
    pub maintain_interval_ms: i64,
    pub shards: u32,
    pub series_per_metric_max: u64,
    pub series_per_tenant_max: u64,
    pub memory_bytes_max: u64,
    /// `future_skew_ms_max` of the nodes' acceptance rules (production default, 10 min).
    pub future_skew_ms_max: i64,
    /// Largest fixed per-node clock skew drawn for the run (±).
    pub clock_skew_ms_max: i64,
    /// Largest clock drift drawn per node, in parts per million (±).
    pub clock_drift_ppm_max: i64,
    /// Whether a cardinality-bomb writer runs (to node 0; in `replicated`, to each node in turn).
    pub bomb: bool,
    /// Period of the reader that checks acked ⊆ answer ⊆ attempted during the run.
    pub read_interval_ms: u64,
    /// A bug planted on purpose (`--plant`), to test the oracles.
    pub planted_bug: Option<PlantedBug>,
}

impl SimConfig {
    /// The configuration of `scenario` for `seed`.
    pub fn new(seed: u64, scenario: Scenario) -> SimConfig {
        let skewed = matches!(scenario, Scenario::Skew | Scenario::Mixed);
        let metadata = scenario == Scenario::Metadata;
        let replicated = scenario == Scenario::Replicated;
        SimConfig {
            seed,
            scenario,
            // Metadata: the initial voters (a fourth member joins during the run); writers are
            // the clients proposing commands.
            nodes: if metadata || replicated { 3 } else { 2 },
            writers: if metadata { 2 } else { 3 },
            series_per_writer: 24,
            write_interval_ms: 1_000,
            fault_phase_ms: if metadata { 40_000 } else { 60_000 },
            // Replicated: leases lapse, promotions and merge-backs finish in the quiet phase.
            quiet_phase_ms: if replicated { 20_000 } else { 10_000 },
            liveness_ms_max: 20_000,
            request_timeout_ms: 3_000,
            retries_max: 5,
            wal_segment_bytes: 64 * 1024,
            block_span_ms: 30_000,
            maintain_interval_ms: 2_000,
            shards: 4,
            series_per_metric_max: 60,
            series_per_tenant_max: 600,
            memory_bytes_max: 64 << 20,
            future_skew_ms_max: 10 * 60 * 1000,
            clock_skew_ms_max: if skewed { 3_600_000 } else { 2_000 },
            clock_drift_ppm_max: if skewed { 500 } else { 50 },
            // Replicated: the bomb sends to each node in turn, so the cluster must hold one
            // limit whichever node receives the series (oracle 9).
            bomb: matches!(scenario, Scenario::Bomb | Scenario::Mixed | Scenario::Replicated),
            read_interval_ms: 5_000,
            planted_bug: None,
        }
        .with_limits_fitted()
    }

    /// Raises the series limits so the normal writers of one node never reach them (only the
    /// bomb should): at least the defaults, at least twice the normal series per node.
    pub fn with_limits_fitted(self) -> SimConfig {
        let writers_per_node = self.writers.div_ceil(self.nodes.max(1)) as u64;
        let normal_series_per_node = writers_per_node * self.series_per_writer as u64 + 64;
        SimConfig {
            series_per_metric_max: self.series_per_metric_max.max(2 * normal_series_per_node),
            series_per_tenant_max: self.series_per_tenant_max.max(4 * normal_series_per_node),
            ..self
        }
    }
}
