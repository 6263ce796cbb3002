//! One seed, start to finish: the workload, the fault schedule, the oracles and the trace
//! hash. `run` is the one runner that the binary, `ci/sim` and the scenario tests call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::net::SocketAddr;
use std::time::Duration;

use madsim::runtime::Runtime;
use madsim::time::TimeHandle;
use sextant::node::Node;
use sextant_core::determinism::DeterministicRng;
use xxhash_rust::xxh64::Xxh64;

use crate::client;
use crate::clock::true_wall_ms;
use crate::cluster::Cluster;
use crate::config::{Scenario, SimConfig};
use crate::ledger::{check_answer, series_key, Answer, Ledger, LossAllowance, Outcome, ReadPath, Violation, WrittenSample};
use crate::report::{RunOptions, RunReport, TimedViolation};
use crate::schedule::{Fault, FaultEvent, Schedule};
use crate::workload::{bomb_request, SeriesSet, BOMB_METRIC};

/// The tenant every writer uses (no authentication in the simulation yet).
const TENANT: &str = "default";
/// How long one read-back may take before the reader gives up on it.
const READ_TIMEOUT_MS: u64 = 10_000;
/// New series per bomb request.
const BOMB_SERIES_PER_REQUEST: u64 = 20;

/// Simulated milliseconds since the run started.
fn now_ms() -> u64 {
    TimeHandle::current().elapsed().as_millis() as u64
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms.max(1))).await;
}

/// State shared by the tasks of one run (one thread: the locks are never contended, and
/// never held across an await).
struct Shared {
    config: SimConfig,
    ledger: Mutex<Ledger>,
    trace: Mutex<Xxh64>,
    trace_events: Mutex<u64>,
    verbose: bool,
    violations: Mutex<Vec<TimedViolation>>,
    effective: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
    clogged: Mutex<BTreeSet<(usize, usize)>>,
    paused: Mutex<BTreeSet<usize>>,
    /// Nodes cut off from the other nodes (`replicated`).
    partitioned: Mutex<BTreeSet<usize>>,
    /// Set when the quiet phase starts: acks after it show that ingest recovered.
    quiet: AtomicBool,
    quiet_acks: Mutex<BTreeMap<usize, u64>>,
    /// Restarts per node (crashes and operator restarts).
    restarts: Mutex<BTreeMap<usize, u64>>,
    /// What lost disks may take (oracle 2), and the series → shard map it judges by.
    allowance: Mutex<LossAllowance>,
    /// (member id, shard) → simulated ms at which the member, as the shard's primary, was
    /// seen running it unprotected (accepting past `L`: its secondary known down).
    exposed: Mutex<BTreeMap<(u64, u32), Vec<u64>>>,
    /// The id the next wiped machine comes back as.
    next_member_id: Mutex<u64>,
}

impl Shared {
    /// Appends an event to the trace (and prints it with `--trace`).
    fn event(&self, text: String) {
        let line = format!("{} {text}\n", now_ms());
        self.trace.lock().expect("trace").update(line.as_bytes());
        *self.trace_events.lock().expect("trace") += 1;
        if self.verbose {
            eprint!("[sim] {line}");
        }
    }

    /// The ledger a write to `node` is recorded in, and a read of `node` is judged against:
    /// the node's own in the single-node scenarios; in `replicated` one ledger for the whole
    /// cluster (0), since any node takes writes for every series and reads every shard.
    fn ledger_of(&self, node: usize) -> usize {
        if self.config.scenario == Scenario::Replicated {
            0
        } else {
            node
        }
    }

    /// The answer oracles on node `index`'s answer (`check_answer`), with lost disks'
    /// allowance; counts what the allowance excused.
    fn judge(&self, index: usize, answer: &Answer, acked_before_ms: u64) -> Vec<Violation> {
        let judged = {
            let ledger = self.ledger.lock().expect("ledger");
            let allowance = self.allowance.lock().expect("allowance");
            ledger.nodes.get(&self.ledger_of(index)).map(|l| check_answer(index, l, answer, acked_before_ms, ReadPath::QueryApi, &allowance)).unwrap_or_default()
        };
        self.count("wipe: acked samples missing within the loss allowance", judged.lost_within_allowance as u64);
        judged.violations
    }

    fn count(&self, what: &str, n: u64) {
        if n > 0 {
            *self.effective.lock().expect("effective").entry(what.to_string()).or_default() += n;
        }
    }

    fn violate(&self, violation: Violation) {
        self.event(format!("VIOLATION {}: {}", violation.oracle, violation.evidence));
        self.violations.lock().expect("violations").push(TimedViolation {
            at_ms: now_ms(),
            oracle: violation.oracle.to_string(),
            evidence: violation.evidence,
        });
    }
}

/// How far back a read reaches from its evaluation time: far more than any run lasts (the
/// simulated wall clock starts at a fixed epoch and runs for minutes), so the window covers
/// everything written.
const READ_WINDOW: &str = "7d";
/// How far past the true wall clock a read is evaluated: writers stamp samples with the true
/// wall clock, so this covers every sample already sent.
const READ_AHEAD_MS: i64 = 3_600_000;

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters pass).
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A sample value as the query API writes it (Go's `FormatFloat(v, 'f', -1, 64)`, `NaN`,
/// `+Inf`, `-Inf`), back to the `f64` it came from.
pub fn parse_go_float(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text.parse::<f64>().map_err(|e| format!("sample value {text:?} is not a number: {e}")),
    }
}

/// A `matrix` answer of the query API as series key → (t ms, value bits), in returned order.
pub fn parse_matrix(body: &str) -> Result<Answer, String> {
    let json: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("answer is not JSON ({e}): {body:.200}"))?;
    if json["status"] != "success" {
        return Err(format!("answer is not a success: {body:.300}"));
    }
    if json["data"]["resultType"] != "matrix" {
        return Err(format!("answer is not a matrix: {body:.300}"));
    }
    let result = json["data"]["result"].as_array().ok_or_else(|| format!("answer has no result list: {body:.300}"))?;
    let mut answer = Answer::new();
    for series in result {
        let metric = series["metric"].as_object().ok_or_else(|| format!("series without a metric: {series}"))?;
        let mut labels = Vec::with_capacity(metric.len());
        for (name, value) in metric {
            labels.push((name.as_str(), value.as_str().ok_or_else(|| format!("label {name} is not a string: {series}"))?));
        }
        let key = series_key(labels);
        let values = series["values"].as_array().ok_or_else(|| format!("series {key} without values"))?;
        let mut samples = Vec::with_capacity(values.len());
        for pair in values {
            let (Some(t), Some(v)) = (pair[0].as_f64(), pair[1].as_str()) else {
                return Err(format!("series {key}: sample {pair} is not [seconds, \"value\"]"));
            };
            samples.push(((t * 1000.0).round() as i64, parse_go_float(v)?.to_bits()));
        }
        if answer.insert(key.clone(), samples).is_some() {
            return Err(format!("series {key} appears twice in one answer"));
        }
    }
    Ok(answer)
}

/// The `warnings` of a query API answer (partial results: a shard no replica answered for, or
/// one answered by a secondary that may lag). Absent means none.
pub fn parse_warnings(body: &str) -> Result<Vec<String>, String> {
    let json: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("answer is not JSON ({e}): {body:.200}"))?;
    match &json["warnings"] {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::Array(items) => items.iter().map(|w| w.as_str().map(str::to_string).ok_or_else(|| format!("warning {w} is not a string"))).collect(),
        other => Err(format!("warnings {other} is not a list")),
    }
}

/// A read of everything: the samples, and the warnings that say the answer may be partial.
struct Read {
    answer: Answer,
    warnings: Vec<String>,
}

/// Reads everything a node holds for the tenant through its Prometheus query API: the raw
/// samples of `{__name__=~".+"}[7d]` evaluated an hour past the true wall clock, over HTTP
/// from the calling (client) machine. The one read path of the answer oracles, which compare
/// with [`ReadPath::QueryApi`] semantics (NaN as NaN, no staleness markers).
async fn read_all(addr: SocketAddr) -> Result<Read, String> {
    let at_ms = true_wall_ms() + READ_AHEAD_MS;
    let query = format!("{{__name__=~\".+\"}}[{READ_WINDOW}]");
    let path = format!("/api/v1/query?query={}&time={}.{:03}", url_encode(&query), at_ms.div_euclid(1000), at_ms.rem_euclid(1000));
    let (status, body) = client::send(addr, client::get(addr, &path), READ_TIMEOUT_MS).await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("query answered {status}: {body:.300}"));
    }
    Ok(Read { answer: parse_matrix(&body)?, warnings: parse_warnings(&body)? })
}

async fn read_with_timeout(addr: SocketAddr) -> Result<Read, String> {
    match tokio::time::timeout(Duration::from_millis(READ_TIMEOUT_MS), read_all(addr)).await {
        Ok(result) => result,
        Err(_) => Err("read timed out".into()),
    }
}

/// Sends one batch to `node`, retrying retryable answers and timeouts like Prometheus does.
// Who sends, to where, what, and how persistently: each argument is one of those, and a
// struct holding them for one call would only rename them.
#[allow(clippy::too_many_arguments)]
async fn send_batch(
    shared: &Shared,
    addr: std::net::SocketAddr,
    who: &str,
    writer: Option<usize>,
    node: usize,
    request: &sextant::remote_write::WriteRequest,
    samples: &[WrittenSample],
    retries_max: u32,
) -> Outcome {
    if shared.config.scenario == Scenario::Replicated {
        let mut allowance = shared.allowance.lock().expect("allowance");
        for series in &request.timeseries {
            let key = series_key(series.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())));
            if !allowance.shard_of.contains_key(&key) {
                let labels = sextant_core::labels::Labels::from_pairs(&series.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect::<Vec<_>>());
                let shard = sextant::shard::shard_for(sextant_core::series::fingerprint(TENANT, &labels), shared.config.shards);
                allowance.shard_of.insert(key, shard);
            }
        }
    }
    let mut attempt = 0u32;
    loop {
        shared.ledger.lock().expect("ledger").attempt(shared.ledger_of(node), samples);
        let result = client::send(addr, client::remote_write(addr, request), shared.config.request_timeout_ms).await;
        let outcome = match result {
            Ok((status, message)) => Outcome::from_status(status, message),
            Err(error) => Outcome::Unknown { reason: error.to_string() },
        };
        shared.ledger.lock().expect("ledger").finish(shared.ledger_of(node), samples, &outcome, now_ms());
        shared.event(format!("{who} -> node-{node} try {attempt}: {} samples {}", samples.len(), outcome.label()));
        match &outcome {
            Outcome::Unknown { .. } => {
                if writer.is_some_and(|w| shared.clogged.lock().expect("clogged").contains(&(w, node))) {
                    shared.count("clog: requests lost on a clogged link", 1);
                }
                if shared.paused.lock().expect("paused").contains(&node) {
                    shared.count("pause: requests timed out on a paused node", 1);
                }
            }
            Outcome::Retryable { status } => shared.count(&format!("node: requests refused {status} (retryable)"), 1),
            Outcome::Refused { .. } => shared.count(&format!("node: requests refused 4xx ({})", if who == "bomb" { "bomb, series limits" } else { "writers" }), 1),
            Outcome::Acked => {
                if shared.quiet.load(Ordering::SeqCst) && writer.is_some() {
                    *shared.quiet_acks.lock().expect("quiet").entry(node).or_default() += 1;
                }
            }
        }
        let retry = matches!(outcome, Outcome::Retryable { .. } | Outcome::Unknown { .. });
        if !retry || attempt >= retries_max {
            return outcome;
        }
        sleep_ms((200u64 << attempt.min(4)).min(3_000)).await;
        attempt += 1;
    }
}

/// A writer: one tick per interval, with late (out-of-order) and duplicate sends.
async fn writer_loop(shared: Arc<Shared>, writer: usize, node: usize, addr: std::net::SocketAddr) {
    let config = shared.config.clone();
    let mut rng = DeterministicRng::from_seed(config.seed).fork(&format!("writer-{writer}"));
    let mut set = SeriesSet::new(writer, config.series_per_writer, rng.fork("series"));
    let mut held: Vec<(u64, Vec<(usize, WrittenSample)>)> = Vec::new();
    let mut last_acked: Option<Vec<(usize, WrittenSample)>> = None;
    let who = format!("writer-{writer}");
    // Writers start at different phases of the interval.
    sleep_ms(rng.gen_range(1..=config.write_interval_ms)).await;
    while !shared.stop.load(Ordering::SeqCst) {
        let tick_start = now_ms();
        let mut samples = set.tick(true_wall_ms());
        // Late data: hold back a few series' samples and send them 2–30 s later, after newer
        // samples of the same series (out of order, inside the 10 min window).
        if rng.gen_bool(0.1) && samples.len() > 1 {
            let keep = rng.gen_range(1..samples.len());
            let late = samples.split_off(keep);
            held.push((now_ms() + rng.gen_range(2_000..=30_000), late));
        }
        let request = set.request(&samples);
        let written: Vec<WrittenSample> = samples.iter().map(|(_, s)| s.clone()).collect();
        if send_batch(&shared, addr, &who, Some(writer), node, &request, &written, config.retries_max).await == Outcome::Acked {
            last_acked = Some(samples);
        }
        let now = now_ms();
        let due: Vec<_> = held.iter().filter(|(at, _)| *at <= now).map(|(_, s)| s.clone()).collect();
        held.retain(|(at, _)| *at > now);
        for late in due {
            let written: Vec<WrittenSample> = late.iter().map(|(_, s)| s.clone()).collect();
            send_batch(&shared, addr, &who, Some(writer), node, &set.request(&late), &written, config.retries_max).await;
        }
        // Duplicate data: a sender resending a batch it already got an answer for.
        if rng.gen_bool(0.05) {
            if let Some(again) = &last_acked {
                let written: Vec<WrittenSample> = again.iter().map(|(_, s)| s.clone()).collect();
                send_batch(&shared, addr, &who, Some(writer), node, &set.request(again), &written, config.retries_max).await;
            }
        }
        let spent = now_ms() - tick_start;
        sleep_ms(config.write_interval_ms.saturating_sub(spent)).await;
    }
}

/// The cardinality bomb: a new series per sample, 20 per request, one request per interval,
/// to each of `targets` in turn.
async fn bomb_loop(shared: Arc<Shared>, targets: Vec<(usize, std::net::SocketAddr)>) {
    let mut session = 0u64;
    let mut turn = 0usize;
    while !shared.stop.load(Ordering::SeqCst) {
        let (node, addr) = targets[turn % targets.len()];
        turn += 1;
        let (request, samples) = bomb_request(99, session, BOMB_SERIES_PER_REQUEST, true_wall_ms());
        session += BOMB_SERIES_PER_REQUEST;
        send_batch(&shared, addr, "bomb", None, node, &request, &samples, 0).await;
        sleep_ms(shared.config.write_interval_ms).await;
    }
}

/// Oracle 10 during the run: every sample acked before a read began is in its answer, and
/// the answer holds only written values, in strictly increasing time.
async fn reader_loop(shared: Arc<Shared>, nodes: Vec<(Arc<Mutex<Option<Arc<Node>>>>, SocketAddr)>) {
    while !shared.stop.load(Ordering::SeqCst) {
        sleep_ms(shared.config.read_interval_ms).await;
        for (index, (live, addr)) in nodes.iter().enumerate() {
            // A killed machine is skipped rather than read (a connection error says nothing).
            if live.lock().expect("live").is_none() {
                continue;
            }
            let started_ms = now_ms();
            match read_with_timeout(*addr).await {
                Ok(Read { answer, warnings }) => {
                    // A partial answer (it says so) need not hold every acked sample; it must
                    // still hold only written ones, once each.
                    let acked_before_ms = if warnings.is_empty() { started_ms } else { 0 };
                    if !warnings.is_empty() {
                        shared.count("reader: partial answers (with a warning)", 1);
                    }
                    let violations = shared.judge(index, &answer, acked_before_ms);
                    shared.event(format!("reader: node-{index} answered {} series, {} warnings", answer.len(), warnings.len()));
                    for v in violations {
                        shared.violate(Violation {
                            oracle: v.oracle,
                            evidence: format!("read during the run at {started_ms} ms: {}", v.evidence),
                        });
                    }
                }
                Err(reason) => shared.event(format!("reader: node-{index} read failed: {reason}")),
            }
        }
    }
}

/// Kills node `node`, cuts its disk's power, and runs oracle 5 on its WAL (sim/src/walcheck.rs).
/// Returns (bytes lost, bytes of garbage).
async fn crash(shared: &Arc<Shared>, cluster: &Arc<Cluster>, node: usize, mode: crate::schedule::CrashKind) -> (u64, u64) {
    let fs = cluster.nodes[node].fs.clone();
    cluster.kill(node);
    let wal_config = crate::cluster::engine_config(&shared.config, &crate::cluster::serve_config(&shared.config, cluster.nodes[node].addr)).wal;
    let appended = crate::walcheck::current_wal_files(&fs).await;
    let fsynced = crate::walcheck::durable_wal_files(&fs);
    let (lost, garbage) = cluster.power_cut(node, mode);
    let recovered = crate::walcheck::durable_wal_files(&fs);
    match (
        crate::walcheck::replay(&appended, &wal_config).await,
        crate::walcheck::replay(&fsynced, &wal_config).await,
        crate::walcheck::replay(&recovered, &wal_config).await,
    ) {
        (Ok(appended), Ok(fsynced), Ok(recovered)) => {
            shared.event(format!(
                "wal check node-{node}: {} appended, {} fsynced, {} recovered records",
                appended.len(),
                fsynced.len(),
                recovered.len()
            ));
            shared.count("crash: WAL records lost (appended, not recovered)", appended.len().saturating_sub(recovered.len()) as u64);
            for evidence in crate::walcheck::check(node, &appended, &fsynced, &recovered) {
                shared.violate(Violation {
                    oracle: "5-wal-prefix",
                    evidence: format!("crash ({mode:?}): {evidence}"),
                });
            }
        }
        (a, b, c) => {
            for error in [a.err(), b.err(), c.err()].into_iter().flatten() {
                shared.violate(Violation {
                    oracle: "5-wal-prefix",
                    evidence: format!("node {node}: a copy of its WAL does not replay: {error}"),
                });
            }
        }
    }
    (lost, garbage)
}

/// Applies one fault and, for faults with a duration, undoes it when it ends.
async fn apply(shared: Arc<Shared>, cluster: Arc<Cluster>, event: FaultEvent) {
    let fault = event.fault.clone();
    shared.event(format!("fault: {fault:?}"));
    let node = fault.node();
    let fs = cluster.nodes[node].fs.clone();
    match fault {
        Fault::Crash { mode, down_ms, .. } => {
            let (lost, garbage) = crash(&shared, &cluster, node, mode).await;
            shared.count("crash: unsynced bytes lost", lost);
            shared.count("crash: garbage bytes after torn writes", garbage);
            shared.event(format!("node-{node} crashed ({mode:?}): {lost} bytes lost, {garbage} garbage"));
            sleep_ms(down_ms).await;
            cluster.restart(node);
            *shared.restarts.lock().expect("restarts").entry(node).or_default() += 1;
            shared.count("crash: nodes restarted", 1);
            shared.event(format!("node-{node} restarted"));
        }
        Fault::Pause { duration_ms, .. } => {
            cluster.pause(node);
            shared.paused.lock().expect("paused").insert(node);
            sleep_ms(duration_ms).await;
            shared.paused.lock().expect("paused").remove(&node);
            cluster.resume(node);
            shared.event(format!("node-{node} resumed"));
        }
        Fault::SyncEio { probability, duration_ms, .. } => {
            fs.set_faults(sextant_storage::fs::sim::FaultConfig {
                sync_eio_probability: probability,
                sync_dir_eio_probability: probability,
                ..fs.faults()
            });
            sleep_ms(duration_ms).await;
            fs.set_faults(sextant_storage::fs::sim::FaultConfig {
                sync_eio_probability: 0.0,
                sync_dir_eio_probability: 0.0,
                ..fs.faults()
            });
        }
        Fault::NoSpace { headroom_bytes, duration_ms, .. } => {
            fs.set_faults(sextant_storage::fs::sim::FaultConfig {
                capacity_bytes: Some(fs.used_bytes() + headroom_bytes),
                ..fs.faults()
            });
            sleep_ms(duration_ms).await;
            fs.set_faults(sextant_storage::fs::sim::FaultConfig { capacity_bytes: None, ..fs.faults() });
        }
        Fault::CorruptReads { probability, duration_ms, .. } => {
            fs.set_faults(sextant_storage::fs::sim::FaultConfig {
                read_corruption_probability: probability,
                ..fs.faults()
            });
            sleep_ms(duration_ms).await;
            fs.set_faults(sextant_storage::fs::sim::FaultConfig {
                read_corruption_probability: 0.0,
                ..fs.faults()
            });
        }
        Fault::SlowDisk { delay_ms_max, duration_ms, .. } => {
            fs.set_faults(sextant_storage::fs::sim::FaultConfig {
                io_delay_ms_max: delay_ms_max,
                ..fs.faults()
            });
            sleep_ms(duration_ms).await;
            fs.set_faults(sextant_storage::fs::sim::FaultConfig { io_delay_ms_max: 0, ..fs.faults() });
        }
        Fault::ClockJump { delta_ms, .. } => {
            cluster.nodes[node].clock.jump(delta_ms);
            shared.count("jump: wall-clock steps applied", 1);
        }
        Fault::Clog { writer, duration_ms, .. } => {
            cluster.clog(writer, node, true);
            shared.clogged.lock().expect("clogged").insert((writer, node));
            sleep_ms(duration_ms).await;
            shared.clogged.lock().expect("clogged").remove(&(writer, node));
            cluster.clog(writer, node, false);
        }
        Fault::Partition { duration_ms, .. } if shared.config.scenario == Scenario::Replicated => {
            if !shared.partitioned.lock().expect("partitioned").insert(node) {
                shared.event(format!("node-{node} is already isolated"));
                return;
            }
            cluster.partition(node, true, &BTreeSet::new());
            shared.count("partition: nodes isolated from the other nodes", 1);
            sleep_ms(duration_ms).await;
            let still_cut = {
                let mut partitioned = shared.partitioned.lock().expect("partitioned");
                partitioned.remove(&node);
                partitioned.clone()
            };
            cluster.partition(node, false, &still_cut);
            shared.event(format!("node-{node} healed"));
        }
        Fault::Wipe { down_ms, .. } if shared.config.scenario == Scenario::Replicated => {
            let lost_id = cluster.nodes[node].member_id();
            let new_id = {
                let mut next = shared.next_member_id.lock().expect("next member id");
                *next += 1;
                *next - 1
            };
            let wiped_ms = now_ms();
            cluster.wipe(node, new_id);
            shared.count("wipe: disks lost (machine back empty under a new member id)", 1);
            let windows = loss_windows(&shared, &cluster, lost_id, wiped_ms);
            shared.event(format!("node-{node} (member {lost_id}) lost its disk; it returns as member {new_id}; loss allowance per shard (acked ms): {windows:?}"));
            {
                let mut allowance = shared.allowance.lock().expect("allowance");
                for (shard, window) in windows {
                    allowance.windows.entry(shard).or_default().push(window);
                }
            }
            sleep_ms(down_ms).await;
            cluster.restart(node);
            *shared.restarts.lock().expect("restarts").entry(node).or_default() += 1;
            let replacement = crate::operator::Replacement { index: node, lost_id, new_id };
            let deadline_ms = shared.config.fault_phase_ms + shared.config.quiet_phase_ms;
            let log = shared.clone();
            let operator = cluster.operator.as_ref().expect("created when the schedule wipes a disk");
            let replaced = operator.spawn(crate::operator::replace_lost_member(cluster.clone(), replacement, deadline_ms, move |line| log.event(line))).await;
            match replaced {
                Ok(Ok(changes)) => {
                    shared.count("wipe: operator admin commands that changed the cluster", changes);
                    shared.event(format!("operator: member {lost_id} replaced by {new_id} ({changes} changes)"));
                }
                Ok(Err(error)) => shared.violate(Violation {
                    oracle: "11-liveness",
                    evidence: format!("the operator could not replace lost member {lost_id} by {new_id}: {error}"),
                }),
                Err(error) => shared.violate(Violation {
                    oracle: "11-liveness",
                    evidence: format!("the operator's task failed: {error}"),
                }),
            }
        }
        // Faults between raft members: the single-node scenarios have no members to cut apart
        // (a pinned schedule naming them is replayed without them, and says so).
        Fault::Partition { .. } | Fault::CrashLeader { .. } | Fault::Wipe { .. } => {
            shared.event(format!("fault not applicable to scenario {}: {fault:?}", shared.config.scenario));
        }
    }
}

/// Slack on the loss allowance's window: the time between a write's lag check and its
/// acknowledgement (a slow disk delays every operation by up to 2 s), and between the
/// primary's acknowledgement and the client's (a forwarded write crosses one more hop).
const LOSS_SLACK_MS: u64 = 3_000;

/// Oracle 2's allowance for member `lost` whose disk went at `wiped_ms`: per shard it
/// acknowledged writes for as primary (the `AckObserver` spans), the acknowledgement times
/// whose samples may be gone. With policy `refuse` a primary acknowledges only while its oldest
/// unreplicated record is younger than `L`, so what it had not streamed when it last
/// acknowledged was logged within `L` before: [last ack − L − slack, wipe + slack]. Where it was
/// seen running the shard unprotected during its last span (secondary known down), the window
/// opens `L` + slack before the first such sighting instead.
fn loss_windows(shared: &Shared, cluster: &Cluster, lost: u64, wiped_ms: u64) -> BTreeMap<u32, (u64, u64)> {
    let lag_ms = crate::cluster::serve_config(&shared.config, cluster.nodes[0].addr).replication_lag_ms_max.max(0) as u64;
    let mut last_span: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for (&(shard, _epoch, node), &(first_ns, last_ns)) in &cluster.acks.lock().expect("ack log").spans {
        if node != lost {
            continue;
        }
        let span = (first_ns / 1_000_000, last_ns / 1_000_000);
        let entry = last_span.entry(shard).or_insert(span);
        if span.1 > entry.1 {
            *entry = span;
        }
    }
    let exposed = shared.exposed.lock().expect("exposed");
    last_span
        .into_iter()
        .map(|(shard, (first_ms, last_ms))| {
            let mut from = last_ms.saturating_sub(lag_ms + LOSS_SLACK_MS);
            if let Some(&seen) = exposed.get(&(lost, shard)).and_then(|times| times.iter().find(|&&t| t >= first_ms && t <= wiped_ms)) {
                from = from.min(seen.saturating_sub(lag_ms + LOSS_SLACK_MS));
            }
            (shard, (from, wiped_ms + LOSS_SLACK_MS))
        })
        .collect()
}

/// Notes, every 200 ms, which member runs which shard unprotected as its primary (what `admin
/// shards` shows as `,unprotected`), for oracle 2's allowance.
async fn record_exposure(shared: Arc<Shared>, cluster: Arc<Cluster>) {
    while !shared.stop.load(Ordering::SeqCst) {
        for sim_node in &cluster.nodes {
            let Some(node) = sim_node.node() else { continue };
            let id = sim_node.member_id();
            for (shard, state) in node.replication().primary_shards() {
                if state.unprotected {
                    shared.exposed.lock().expect("exposed").entry((id, shard)).or_default().push(now_ms());
                }
            }
        }
        sleep_ms(200).await;
    }
}

/// Polls `/-/ready` and then a probe write until both succeed or `deadline_ms` passes.
/// Returns the last (ready status, ready body, write outcome).
async fn probe(shared: Arc<Shared>, cluster: Arc<Cluster>, node: usize, deadline_ms: u64) -> (u16, String, Option<Outcome>) {
    let addr = cluster.nodes[node].addr;
    let mut last = (0, String::from("no answer"), None);
    let mut sequence = 0u64;
    while now_ms() < deadline_ms {
        match client::send(addr, client::get(addr, "/-/ready"), shared.config.request_timeout_ms).await {
            Ok((status, body)) => {
                last = (status, body, None);
                // Write even when not ready: the skew oracle needs to see what the node does.
                let t = true_wall_ms();
                let labels = [("__name__", "sim_liveness_probe".to_string()), ("node", format!("{node}")), ("probe", format!("{sequence}"))];
                sequence += 1;
                let key = series_key(labels.iter().map(|(n, v)| (*n, v.as_str())));
                let sample = WrittenSample { series: key, t, bits: 1f64.to_bits() };
                let request = sextant::remote_write::WriteRequest {
                    timeseries: vec![sextant::remote_write::TimeSeries {
                        labels: labels
                            .iter()
                            .map(|(n, v)| sextant::remote_write::Label {
                                name: n.to_string(),
                                value: v.clone(),
                            })
                            .collect(),
                        samples: vec![sextant::remote_write::Sample { value: 1.0, timestamp: t }],
                        exemplars: vec![],
                        histograms: vec![],
                    }],
                    metadata: vec![],
                };
                let outcome = send_batch(&shared, addr, "probe", None, node, &request, &[sample], 0).await;
                let done = last.0 == 200 && outcome == Outcome::Acked;
                last.2 = Some(outcome);
                if done {
                    return last;
                }
            }
            Err(error) => last = (0, error.to_string(), None),
        }
        sleep_ms(500).await;
    }
    last
}

/// Oracle 11 and the clock-skew oracle, after the quiet phase.
async fn check_liveness(shared: &Arc<Shared>, cluster: &Arc<Cluster>) {
    let config = &shared.config;
    for node in 0..cluster.nodes.len() {
        let deadline_ms = now_ms() + config.liveness_ms_max;
        let offset_ms = cluster.nodes[node].clock.offset_ms();
        let skewed = offset_ms < -config.future_skew_ms_max;
        // Probes run on the probe machine: the supervisor has no network address.
        let task = cluster.probe.spawn(probe(shared.clone(), cluster.clone(), node, if skewed { now_ms() + 3_000 } else { deadline_ms }));
        let (status, body, outcome) = task.await.expect("the probe task completes");
        shared.event(format!("liveness node-{node}: ready {status}, write {:?}", outcome.as_ref().map(|o| o.label())));
        if !skewed {
            if status != 200 || outcome != Some(Outcome::Acked) {
                shared.violate(Violation {
                    oracle: "11-liveness",
                    evidence: format!(
                        "node-{node} (clock offset {offset_ms} ms): {} ms after the quiet phase, /-/ready answered {status} {body:?} and the probe write came to {outcome:?}",
                        config.liveness_ms_max
                    ),
                });
            }
            continue;
        }
        // A node whose clock is behind by more than future_skew_ms_max sees current samples
        // as being from the future. Designed behaviour (SIMULATION.md): notice, report not
        // ready with the reason, let writers route around it. It must never store them.
        if outcome == Some(Outcome::Acked) {
            shared.violate(Violation {
                oracle: "skew-judgement",
                evidence: format!(
                    "node-{node} clock {offset_ms} ms off (limit {} ms) acked a current sample it must judge as from the future",
                    config.future_skew_ms_max
                ),
            });
        }
        let time_refused = matches!(&outcome, Some(Outcome::Refused { status: 400, message }) if message.contains("ahead of the node's clock"));
        // The node must notice (clockcheck.rs: most of its recent clients are ahead past the
        // bound) and say so on /-/ready.
        if status == 200 {
            shared.violate(Violation {
                oracle: "skew-reported",
                evidence: format!(
                    "node-{node} wall clock is {offset_ms} ms off true time (past future_skew_ms_max {} ms) but /-/ready answers 200; writes of current samples {}",
                    config.future_skew_ms_max,
                    if time_refused { "are refused 400 \"ahead of the node's clock\"" } else { "came to something else" }
                ),
            });
        } else if !body.contains("clock") {
            shared.violate(Violation {
                oracle: "skew-reported",
                evidence: format!("node-{node} wall clock is {offset_ms} ms off true time: /-/ready answers {status} without naming the clock: {body:?}"),
            });
        }
        if !time_refused && outcome != Some(Outcome::Acked) {
            shared.violate(Violation {
                oracle: "skew-judgement",
                evidence: format!("node-{node} clock {offset_ms} ms off: a current sample came to {outcome:?}, expected a 400 naming the node's clock"),
            });
        }
    }
}

/// Oracle 9 in a cluster: the bomb, sent to every node in turn, meets one limit. Each shard's
/// primary admits new series up to its share (`limit_share`), counting what it stores when it
/// takes the shard over; so for every shard, the distinct bomb series stored anywhere in the
/// cluster, and those its current primary counts, are at most one share per epoch the shard
/// had (each epoch has one primary, oracle 8; a promoted primary can exceed one share only by
/// what the old primary admitted and merge-back brings over). Memory within budget on every
/// node, and normal writers acked in the quiet phase, as on one node.
async fn check_limits_cluster(shared: &Arc<Shared>, cluster: &Arc<Cluster>) {
    let config = &shared.config;
    let share = sextant::limits::limit_share(config.series_per_metric_max, config.shards);
    let mut stored: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let mut epochs: BTreeMap<u32, u64> = BTreeMap::new();
    for sim_node in &cluster.nodes {
        let Some(node) = sim_node.node() else { continue };
        let Ok(engine) = node.engine() else { continue };
        let table = node.router().table();
        for (shard, route) in &table.shards {
            let epoch = epochs.entry(*shard).or_default();
            *epoch = (*epoch).max(route.epoch);
        }
        // Blocks and head: cuts move the bomb's series out of the head within the run.
        let bomb = [sextant_core::matcher::Matcher::new(sextant_core::matcher::MatchOp::Equal, "__name__", BOMB_METRIC).expect("valid matcher")];
        let Ok(series) = engine.select(TENANT, &bomb, i64::MIN, i64::MAX).await else {
            shared.violate(Violation { oracle: "9-limits", evidence: format!("node-{}: selecting the bomb's series failed", sim_node.index) });
            continue;
        };
        for found in series {
            let shard = sextant::shard::shard_for(sextant_core::series::fingerprint(TENANT, &found.labels), config.shards);
            stored.entry(shard).or_default().insert(found.labels.to_string());
        }
        for (shard, epoch) in table.my_primaries() {
            let tracked = node.active_series_in_shard(TENANT, Some(BOMB_METRIC), shard);
            if tracked > share * epoch.max(1) {
                shared.violate(Violation {
                    oracle: "9-limits",
                    evidence: format!(
                        "node-{} as shard {shard}'s primary at epoch {epoch} counts {tracked} active {BOMB_METRIC} series, over the shard's share {share} of series_per_metric_max {} times its epochs",
                        sim_node.index, config.series_per_metric_max
                    ),
                });
            }
        }
        let status = engine.status().await;
        if status.memory_bytes > status.memory_bytes_max {
            shared.violate(Violation {
                oracle: "9-limits",
                evidence: format!("node-{}: engine memory {} bytes over its budget {} (the engine's own accounting)", sim_node.index, status.memory_bytes, status.memory_bytes_max),
            });
        }
    }
    let total: usize = stored.values().map(BTreeSet::len).sum();
    shared.event(format!("limits: {total} bomb series stored in the cluster, per shard {:?}, share {share}, epochs {epochs:?}", stored.iter().map(|(s, k)| (*s, k.len())).collect::<BTreeMap<_, _>>()));
    for (shard, series) in &stored {
        let epoch = epochs.get(shard).copied().unwrap_or(1).max(1);
        if series.len() as u64 > share * epoch {
            shared.violate(Violation {
                oracle: "9-limits",
                evidence: format!(
                    "shard {shard}: {} distinct {BOMB_METRIC} series stored in the cluster, over its share {share} of series_per_metric_max {} times its {epoch} epochs (the bomb wrote to every node in turn)",
                    series.len(),
                    config.series_per_metric_max
                ),
            });
        }
    }
    let quiet_acks: u64 = shared.quiet_acks.lock().expect("quiet").values().sum();
    if quiet_acks == 0 {
        shared.violate(Violation {
            oracle: "9-limits",
            evidence: "no normal writer request was acked during the quiet phase while the bomb ran (other metrics must keep ingesting)".into(),
        });
    }
}

/// Oracle 9: the bomb stays within the limits while other metrics keep ingesting.
async fn check_limits(shared: &Arc<Shared>, cluster: &Arc<Cluster>) {
    let config = &shared.config;
    if config.scenario == Scenario::Replicated {
        return check_limits_cluster(shared, cluster).await;
    }
    let Some(node) = cluster.nodes[0].node() else {
        shared.violate(Violation {
            oracle: "9-limits",
            evidence: "node-0 is down at the end of the run".into(),
        });
        return;
    };
    let Ok(engine) = node.engine() else { return };
    let bomb_series = engine.head_series_count(TENANT, Some(BOMB_METRIC)).await;
    let tracked = node.active_series(TENANT, Some(BOMB_METRIC));
    let tenant_series = engine.head_series_count(TENANT, None).await;
    let status = engine.status().await;
    shared.event(format!(
        "limits: bomb series in head {bomb_series}, tracked {tracked}, tenant {tenant_series}, memory {} / {}",
        status.memory_bytes, status.memory_bytes_max
    ));
    let bomb_acked = shared
        .ledger
        .lock()
        .expect("ledger")
        .nodes
        .get(&0)
        .map(|l| l.acked.keys().filter(|k| k.contains(BOMB_METRIC)).count())
        .unwrap_or(0);
    let restarts = shared.restarts.lock().expect("restarts").get(&0).copied().unwrap_or(0);
    // The tracker is seeded from the head at every start (Node::set_engine_ready), so
    // restarts do not reset the limit: the head never holds more than the limit, restarts or
    // not (this was the known gap limits-reset-on-restart, sim/regressions/).
    if tracked > config.series_per_metric_max || bomb_series > config.series_per_metric_max {
        shared.violate(Violation {
            oracle: "9-limits",
            evidence: format!(
                "node-0: {bomb_series} {BOMB_METRIC} series in the head and {tracked} tracked as active after {restarts} restarts, limit series_per_metric_max = {} ({bomb_acked} bomb series were acked to the client)",
                config.series_per_metric_max
            ),
        });
    }
    if tenant_series > config.series_per_tenant_max {
        shared.violate(Violation {
            oracle: "9-limits",
            evidence: format!("node-0: tenant holds {tenant_series} series, limit {}", config.series_per_tenant_max),
        });
    }
    if status.memory_bytes > status.memory_bytes_max {
        shared.violate(Violation {
            oracle: "9-limits",
            evidence: format!(
                "node-0: engine memory {} bytes over its budget {} (the engine's own accounting)",
                status.memory_bytes, status.memory_bytes_max
            ),
        });
    }
    let quiet_acks = shared.quiet_acks.lock().expect("quiet").get(&0).copied().unwrap_or(0);
    let node0_skewed = cluster.nodes[0].clock.offset_ms() < -config.future_skew_ms_max;
    if quiet_acks == 0 && !node0_skewed {
        shared.violate(Violation {
            oracle: "9-limits",
            evidence: "node-0: no normal writer request was acked during the quiet phase while the bomb ran (other metrics must keep ingesting)".into(),
        });
    }
}

/// Reads every live node and runs the answer oracles against everything acked so far.
async fn check_all_nodes(shared: &Arc<Shared>, cluster: &Arc<Cluster>, phase: &str) {
    for sim_node in &cluster.nodes {
        let index = sim_node.index;
        if sim_node.node().is_none() {
            shared.violate(Violation {
                oracle: "11-liveness",
                evidence: format!("{phase}: node-{index} is down"),
            });
            continue;
        }
        // Reads go over the network from the reader's machine, as a client's would. A cluster
        // answers whole once every shard's primary holds its lease again (after a restart of
        // all nodes, say): a partial answer is retried until `liveness_ms_max` has passed.
        let addr = sim_node.addr;
        let deadline_ms = now_ms() + shared.config.liveness_ms_max;
        let (started_ms, read) = loop {
            let started_ms = now_ms();
            let read = cluster.reader.spawn(read_with_timeout(addr)).await.unwrap_or_else(|e| Err(format!("the read task failed: {e}")));
            let partial = read.as_ref().is_ok_and(|r| !r.warnings.is_empty());
            if !partial || now_ms() >= deadline_ms {
                break (started_ms, read);
            }
            shared.event(format!("{phase}: node-{index} answered partially; reading again"));
            sleep_ms(500).await;
        };
        match read {
            Ok(Read { answer, warnings }) => {
                if !warnings.is_empty() {
                    shared.violate(Violation {
                        oracle: "11-liveness",
                        evidence: format!("{phase}: node-{index} still answers partially {} ms after the read began: {warnings:?}", shared.config.liveness_ms_max),
                    });
                }
                let violations = shared.judge(index, &answer, started_ms);
                let samples: usize = answer.values().map(Vec::len).sum();
                shared.event(format!("{phase}: node-{index} holds {} series, {samples} samples", answer.len()));
                for v in violations {
                    shared.violate(Violation {
                        oracle: v.oracle,
                        evidence: format!("{phase}: {}", v.evidence),
                    });
                }
            }
            Err(reason) => shared.violate(Violation {
                oracle: "10-query",
                evidence: format!("{phase}: node-{index} could not be read: {reason}"),
            }),
        }
    }
}

/// Waits until every node's engine is open (after a restart) — in `replicated`, until every
/// node is ready and holds the shard map — at most `timeout_ms`.
async fn wait_open(cluster: &Cluster, timeout_ms: u64) {
    let deadline = now_ms() + timeout_ms;
    let replicated = cluster.config.scenario == Scenario::Replicated;
    while now_ms() < deadline {
        let open = |node: &Arc<Node>| if replicated { node.readiness().is_ok() && node.router().table().shard_count().is_some() } else { node.engine().is_ok() };
        if cluster.nodes.iter().all(|n| n.node().is_some_and(|node| open(&node))) {
            return;
        }
        sleep_ms(100).await;
    }
}

/// The final convergence oracles of `replicated`, once writers have stopped:
/// - 7-metadata-identical: every member applies the same index and holds the same state;
/// - 6-replica-convergence: every shard has a primary and a secondary, no merge-back pending,
///   and the two replicas' digests (`shards --verify`'s, over all time) are equal.
///
/// Both are given `liveness_ms_max` to settle (replication and merge-back finish after the
/// last write); the evidence is the last state seen.
async fn check_replicas(shared: &Arc<Shared>, cluster: &Arc<Cluster>) {
    let deadline_ms = now_ms() + shared.config.liveness_ms_max;
    let mut metadata_evidence;
    loop {
        let reads: Vec<Option<(u64, u64)>> = cluster
            .nodes
            .iter()
            .map(|n| {
                n.raft().map(|raft| {
                    let read = raft.local_read();
                    let mut hasher = Xxh64::new(0);
                    hasher.update(&crate::metadata::encode_state(&read.state));
                    (read.applied_index, hasher.digest())
                })
            })
            .collect();
        let same = reads.iter().all(|r| r.is_some() && *r == reads[0]);
        metadata_evidence = if same { None } else { Some(format!("(applied index, state hash) per node: {reads:?}")) };
        if same || now_ms() >= deadline_ms {
            break;
        }
        sleep_ms(200).await;
    }
    if let Some(evidence) = metadata_evidence {
        shared.violate(Violation {
            oracle: "7-metadata-identical",
            evidence: format!("{} ms after writers stopped, the members differ: {evidence}", shared.config.liveness_ms_max),
        });
    }
    let mut replica_evidence;
    loop {
        replica_evidence = replica_differences(cluster).await;
        if replica_evidence.is_empty() || now_ms() >= deadline_ms {
            break;
        }
        sleep_ms(500).await;
    }
    if replica_evidence.is_empty() {
        shared.event("replicas: every shard has two equal replicas".into());
    }
    for evidence in replica_evidence {
        shared.violate(Violation {
            oracle: "6-replica-convergence",
            evidence: format!("{} ms after writers stopped: {evidence}", shared.config.liveness_ms_max),
        });
    }
}

/// What keeps the shards from being two equal replicas each (empty: converged). Reads the map
/// from the first live member and each replica's digest from its engine.
async fn replica_differences(cluster: &Arc<Cluster>) -> Vec<String> {
    let Some(raft) = cluster.nodes.iter().find_map(|n| n.raft()) else {
        return vec!["no member is up".into()];
    };
    let Some(map) = raft.local_read().state.shard_map else {
        return vec!["the cluster has no shard map".into()];
    };
    let mut out = Vec::new();
    for (&shard, entry) in &map.shards {
        if let Some(pending) = &entry.merge_pending {
            out.push(format!("shard {shard}: merge-back from node {} still pending at epoch {}", pending.from_node, pending.epoch));
        }
        let (Some(primary), Some(secondary)) = (entry.primary, entry.secondary) else {
            out.push(format!("shard {shard}: primary {:?}, secondary {:?} (RF=2 wants both)", entry.primary, entry.secondary));
            continue;
        };
        let mut digests = Vec::new();
        for id in [primary, secondary] {
            let node = cluster.index_of_member(id).and_then(|i| cluster.nodes[i].node());
            let digest = match node.map(|n| n.engine()) {
                Some(Ok(engine)) => engine.shard_digest(shard, i64::MIN, i64::MAX).await.map_err(|e| e.to_string()),
                Some(Err(error)) => Err(error),
                None => Err("down".to_string()),
            };
            digests.push((id, digest));
        }
        match (&digests[0].1, &digests[1].1) {
            (Ok(a), Ok(b)) if a == b => {}
            _ => out.push(format!("shard {shard} (epoch {}): digests differ: {digests:?}", entry.epoch)),
        }
    }
    out
}

async fn simulate(options: RunOptions, config: SimConfig, schedule: Schedule) -> (Vec<TimedViolation>, Vec<String>, BTreeMap<String, u64>, u64, u64) {
    let shared = Arc::new(Shared {
        config: config.clone(),
        ledger: Mutex::new(Ledger::default()),
        trace: Mutex::new(Xxh64::new(0)),
        trace_events: Mutex::new(0),
        verbose: options.verbose,
        violations: Mutex::new(Vec::new()),
        effective: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
        clogged: Mutex::new(BTreeSet::new()),
        paused: Mutex::new(BTreeSet::new()),
        partitioned: Mutex::new(BTreeSet::new()),
        quiet: AtomicBool::new(false),
        quiet_acks: Mutex::new(BTreeMap::new()),
        restarts: Mutex::new(BTreeMap::new()),
        allowance: Mutex::new(LossAllowance::default()),
        exposed: Mutex::new(BTreeMap::new()),
        next_member_id: Mutex::new(config.nodes as u64 + 1),
    });
    shared.event(format!("seed {} scenario {} schedule {}", config.seed, config.scenario, schedule.to_json()));
    let cluster = Arc::new(Cluster::start(config.clone(), &schedule));
    wait_open(&cluster, 30_000).await;

    let mut tasks = Vec::new();
    for writer in 0..config.writers {
        let node = cluster.node_of_writer(writer);
        tasks.push(cluster.writers[writer].spawn(writer_loop(shared.clone(), writer, node, cluster.nodes[node].addr)));
    }
    if config.bomb {
        let targets = match config.scenario {
            Scenario::Replicated => cluster.nodes.iter().map(|n| (n.index, n.addr)).collect(),
            _ => vec![(0, cluster.nodes[0].addr)],
        };
        tasks.push(cluster.bomb.spawn(bomb_loop(shared.clone(), targets)));
    }
    let lives = cluster.nodes.iter().map(|n| (n.live.clone(), n.addr)).collect();
    tasks.push(cluster.reader.spawn(reader_loop(shared.clone(), lives)));
    // Only runs that wipe a disk need it (oracle 2); elsewhere it would only perturb scheduling.
    let recorder = cluster.operator.is_some().then(|| tokio::spawn(record_exposure(shared.clone(), cluster.clone())));

    // The fault phase.
    let mut faults = Vec::new();
    for event in schedule.events.clone() {
        let wait = event.at_ms.saturating_sub(now_ms());
        sleep_ms(wait).await;
        faults.push(tokio::spawn(apply(shared.clone(), cluster.clone(), event)));
    }
    for fault in faults {
        let _ = fault.await;
    }
    sleep_ms(config.fault_phase_ms.saturating_sub(now_ms())).await;

    // The quiet phase: the operator restarts nodes that cannot recover alone (poisoned WAL,
    // failed open, stopped raft member) and NTP corrects stepped clocks; then nothing happens
    // for a while.
    shared.event("quiet phase".into());
    // BUGGIFY is fault injection too: off while liveness is judged.
    sextant_core::determinism::buggify_enable(false);
    for sim_node in &cluster.nodes {
        let stepped = sim_node.clock.offset_ms();
        sim_node.clock.jump(-sim_node.clock.jumps_ms());
        if sim_node.clock.offset_ms() != stepped {
            shared.event(format!("node-{} clock corrected", sim_node.index));
        }
        let stuck = match sim_node.node() {
            // A restart does not fix a clock (NTP does, above): a node that reports its clock
            // behind its clients is left alone.
            Some(node) => node.readiness().err().filter(|reason| !reason.contains("opening") && !reason.contains("wall clock")),
            None => Some("down".into()),
        };
        if let Some(reason) = stuck {
            shared.event(format!("operator restarts node-{}: {reason}", sim_node.index));
            shared.count("operator: nodes restarted after faults (poisoned WAL, failed open, stopped raft member)", 1);
            cluster.kill(sim_node.index);
            cluster.restart(sim_node.index);
            *shared.restarts.lock().expect("restarts").entry(sim_node.index).or_default() += 1;
        }
    }
    shared.quiet.store(true, Ordering::SeqCst);
    sleep_ms(config.quiet_phase_ms).await;

    // Known gaps are reported, not failed, unless `--strict`; none is known at present (the
    // last one, skew-unreported, is fixed: clockcheck.rs), the slot stays for the next.
    let known_gaps: Vec<String> = Vec::new();
    check_liveness(&shared, &cluster).await;
    if config.bomb {
        check_limits(&shared, &cluster).await;
    }
    shared.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        let _ = task.await;
    }
    if let Some(recorder) = recorder {
        let _ = recorder.await;
    }
    check_all_nodes(&shared, &cluster, "final read").await;
    if config.scenario == Scenario::Replicated {
        check_replicas(&shared, &cluster).await;
        // Oracle 8: no two primaries acknowledged one shard's writes over overlapping time.
        let (acks, overlaps) = {
            let log = cluster.acks.lock().expect("ack log");
            (log.acks, log.overlaps())
        };
        shared.event(format!("primary acknowledgements: {acks}"));
        for evidence in overlaps {
            shared.violate(Violation { oracle: "8-no-split-brain", evidence });
        }
    }

    // Oracle 1 with fsync-before-ack: everything acked survives every node losing power at once.
    for index in 0..cluster.nodes.len() {
        let (lost, garbage) = crash(&shared, &cluster, index, crate::schedule::CrashKind::Torn).await;
        shared.event(format!("final power cut node-{index}: {lost} bytes lost, {garbage} garbage"));
        cluster.restart(index);
    }
    wait_open(&cluster, config.liveness_ms_max).await;
    check_all_nodes(&shared, &cluster, "after all nodes crashed at once").await;

    // Effective disk faults, as the disks counted them.
    for sim_node in &cluster.nodes {
        let stats = sim_node.fs.stats();
        shared.count("eio: fsyncs failed", stats.syncs_failed + stats.sync_dirs_failed);
        shared.count("enospc: writes refused", stats.writes_refused_no_space);
        shared.count("corrupt: reads corrupted", stats.reads_corrupted);
        shared.count("slow: disk operations delayed", stats.delays);
    }
    let time_refusals: u64 = shared.ledger.lock().expect("ledger").nodes.values().map(|l| l.time_refusals).sum();
    shared.count("clock: requests refused by a node's clock (skew/jump)", time_refusals);

    // The trace hash: the event trace, then every disk's durable contents.
    let mut hasher = shared.trace.lock().expect("trace").clone();
    for sim_node in &cluster.nodes {
        for (path, bytes) in sim_node.fs.durable_snapshot() {
            hasher.update(path.to_string_lossy().as_bytes());
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
    }
    let violations = shared.violations.lock().expect("violations").clone();
    let effective = shared.effective.lock().expect("effective").clone();
    let acked: u64 = shared.ledger.lock().expect("ledger").nodes.values().map(|l| l.samples_acked).sum();
    (violations, known_gaps, effective, hasher.digest(), acked)
}

/// Runs one seed on a fresh thread with a fresh madsim runtime (std's hash keys and BUGGIFY's
/// state are per thread), and reports. A panic inside the simulation is a failure.
pub fn run(options: &RunOptions) -> RunReport {
    let config = options.config();
    let schedule = schedule_of(options, &config);
    let thread_options = options.clone();
    let (thread_config, thread_schedule) = (config.clone(), schedule.clone());
    let started = std::time::Instant::now();
    let outcome = std::thread::Builder::new()
        .name(format!("seed-{}", options.seed))
        .spawn(move || {
            let seed = thread_config.seed;
            sextant_core::determinism::buggify_reset();
            let buggify_on = buggify_on_for(seed);
            let mut runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
            let limit_ms = thread_config.fault_phase_ms + thread_config.quiet_phase_ms + 600_000;
            runtime.set_time_limit(Duration::from_millis(limit_ms));
            let result = runtime.block_on(simulate_seed(thread_options, thread_config, thread_schedule, buggify_on));
            let buggify: BTreeMap<String, (u64, u64)> = sextant_core::determinism::buggify_counts()
                .into_iter()
                .map(|(site, c)| (site.to_string(), (c.reached_count, c.fired_count)))
                .collect();
            (result, buggify, buggify_on)
        })
        .expect("spawn a simulation thread")
        .join();
    let wall_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok((((violations, known_gaps, effective, trace_hash, samples_acked), sim_ms), buggify, buggify_on)) => RunReport {
            options: options.clone(),
            config,
            schedule,
            violations,
            known_gaps,
            effective,
            buggify_on,
            buggify,
            panic: None,
            trace_hash,
            sim_ms,
            wall_ms,
            samples_acked,
        },
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            RunReport {
                options: options.clone(),
                config,
                schedule,
                violations: vec![],
                known_gaps: vec![],
                effective: BTreeMap::new(),
                buggify_on: false,
                buggify: BTreeMap::new(),
                panic: Some(message),
                trace_hash: 0,
                sim_ms: 0,
                wall_ms,
                samples_acked: 0,
            }
        }
    }
}

/// Runs one seed in a child process (`exe outcome <the run's arguments>`, normally this very
/// `sextant-sim` binary) and reports what it sent back. Why a process per seed: tokio's
/// `watch` channels and unbiased `select!`s draw from a per-thread RNG that tokio seeds from a
/// process-wide counter, so the same seed run as the k-th seed of a sweep and as the only run
/// of a replay could schedule differently. A fresh process makes a sweep's seed exactly its
/// replay (docs/design/simulation.md § Determinism). A child that dies without an outcome is a
/// failed run, with its exit status and the tail of its stderr.
pub fn run_in_child(exe: &std::path::Path, options: &RunOptions) -> RunReport {
    let config = options.config();
    let schedule = schedule_of(options, &config);
    let started = std::time::Instant::now();
    let failed = |message: String| RunReport {
        options: options.clone(),
        config: config.clone(),
        schedule: schedule.clone(),
        violations: vec![],
        known_gaps: vec![],
        effective: BTreeMap::new(),
        buggify_on: false,
        buggify: BTreeMap::new(),
        panic: Some(message),
        trace_hash: 0,
        sim_ms: 0,
        wall_ms: started.elapsed().as_millis() as u64,
        samples_acked: 0,
    };
    if options.schedule.is_some() {
        return failed("a pinned schedule cannot be passed to a child process; run it in process".into());
    }
    let output = match std::process::Command::new(exe).arg("outcome").args(options.cli_args()).stdin(std::process::Stdio::null()).output() {
        Ok(output) => output,
        Err(e) => return failed(format!("could not start {}: {e}", exe.display())),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = { let lines: Vec<&str> = stderr.lines().collect(); lines[lines.len().saturating_sub(20)..].join("\n") };
    match stdout.lines().rev().find(|l| l.starts_with('{')).map(serde_json::from_str::<crate::report::RunOutcome>) {
        Some(Ok(outcome)) => RunReport::from_outcome(options.clone(), config.clone(), schedule.clone(), outcome),
        Some(Err(e)) => failed(format!("the child's outcome did not parse ({e}); stderr:\n{tail}")),
        None => failed(format!("the child exited with {} and no outcome; stderr:\n{tail}", output.status)),
    }
}

/// Whether BUGGIFY sites may fire in this seed's run (half of the seeds).
fn buggify_on_for(seed: u64) -> bool {
    DeterministicRng::from_seed(seed).fork("buggify").gen_bool(0.5)
}

/// The schedule a run uses: the pinned one, or the one its scenario draws from the seed.
fn schedule_of(options: &RunOptions, config: &SimConfig) -> Schedule {
    options.schedule.clone().unwrap_or_else(|| {
        if config.scenario == crate::config::Scenario::Metadata {
            crate::metadata::draw_schedule(config, &options.fault_kinds())
        } else {
            Schedule::draw(config, &options.fault_kinds())
        }
    })
}

/// What one seed's simulation returns: (violations, known gaps, effective counts, trace hash,
/// acked count), and the simulated time it ended at.
type SeedResult = ((Vec<TimedViolation>, Vec<String>, BTreeMap<String, u64>, u64, u64), u64);

/// One seed's simulation inside its runtime (the thread's BUGGIFY state already reset).
async fn simulate_seed(options: RunOptions, config: SimConfig, schedule: Schedule, buggify_on: bool) -> SeedResult {
    sextant_core::determinism::buggify_enable(buggify_on);
    sextant_core::determinism::planted::plant(config.planted_bug.and_then(|b| b.in_code()));
    let result = if config.scenario == crate::config::Scenario::Metadata {
        let outcome = crate::metadata::simulate(options, config, schedule).await;
        (outcome.violations, Vec::new(), outcome.effective, outcome.trace_hash, outcome.writes_acked)
    } else {
        simulate(options, config, schedule).await
    };
    (result, now_ms())
}

/// The inputs of the seeds under `check_determinism`, by seed: madsim's check takes a plain
/// `fn()` future factory, which reads its seed from the runtime and its inputs from here.
static DETERMINISM_INPUTS: Mutex<BTreeMap<u64, (RunOptions, SimConfig, Schedule)>> = Mutex::new(BTreeMap::new());

async fn determinism_run() -> u64 {
    let seed = madsim::runtime::Handle::current().seed();
    let (options, config, schedule) = DETERMINISM_INPUTS.lock().expect("determinism inputs").get(&seed).cloned().expect("inputs registered for the seed");
    sextant_core::determinism::buggify_reset();
    let ((_, _, _, trace_hash, _), _) = simulate_seed(options, config, schedule, buggify_on_for(seed)).await;
    trace_hash
}

/// Runs one seed twice under madsim's own determinism check (`Runtime::check_determinism`, what
/// `MADSIM_TEST_CHECK_DETERMINISM` does for `#[madsim::test]`): the first run logs every random
/// draw of the runtime (scheduling, network, our seeded draws through madsim), the second
/// panics at the first draw that differs. This catches nondeterminism the trace hash may not
/// (a draw whose effect does not reach the trace). Returns the trace hash of the second run, or
/// the panic's message. Without a time limit: use it on seeds known to finish.
pub fn check_determinism(options: &RunOptions) -> Result<u64, String> {
    let config = options.config();
    let schedule = schedule_of(options, &config);
    let seed = config.seed;
    DETERMINISM_INPUTS.lock().expect("determinism inputs").insert(seed, (options.clone(), config, schedule));
    let result = std::panic::catch_unwind(|| Runtime::check_determinism(seed, madsim::Config::default(), determinism_run));
    DETERMINISM_INPUTS.lock().expect("determinism inputs").remove(&seed);
    result.map_err(|payload| {
        payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "non-string panic".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: query API answers parse back to the values written: Go's float forms (NaN, ±Inf,
    // no exponent, -0), timestamps with milliseconds, labels keyed like the ledger's; and a
    // malformed answer is an error naming what was wrong, never a panic or an empty answer.
    #[test]
    fn query_api_answers_parse() {
        fn check(body: &str, expected: Result<Vec<(&str, Vec<(i64, u64)>)>, &str>) {
            let got = parse_matrix(body);
            match expected {
                Ok(series) => {
                    let expected: Answer = series.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                    assert_eq!(got, Ok(expected), "{body}");
                }
                Err(needle) => {
                    let error = got.expect_err(body);
                    assert!(error.contains(needle), "{body}: error {error:?} should mention {needle:?}");
                }
            }
        }
        let matrix = |result: &str| format!(r#"{{"status":"success","data":{{"resultType":"matrix","result":[{result}]}}}}"#);
        check(
            &matrix(r#"{"metric":{"__name__":"x","b":"2","a":"1"},"values":[[1700000000.001,"1.5"],[1700000000.010,"NaN"],[1700000001,"+Inf"],[1700000002.5,"-Inf"],[1700000003.999,"-0"],[1700000004,"100000000000000000000"]]}"#),
            Ok(vec![(
                r#"{__name__="x",a="1",b="2"}"#,
                vec![
                    (1_700_000_000_001, 1.5f64.to_bits()),
                    (1_700_000_000_010, f64::NAN.to_bits()),
                    (1_700_000_001_000, f64::INFINITY.to_bits()),
                    (1_700_000_002_500, f64::NEG_INFINITY.to_bits()),
                    (1_700_000_003_999, (-0.0f64).to_bits()),
                    (1_700_000_004_000, 1e20f64.to_bits()),
                ],
            )]),
        );
        check(&matrix(""), Ok(vec![]));
        check(&matrix(r#"{"metric":{"a":"1"},"values":[[1,"x"]]}"#), Err("\"x\" is not a number"));
        check(&matrix(r#"{"metric":{"a":"1"},"values":[[1,2]]}"#), Err("is not [seconds"));
        check(&matrix(r#"{"metric":{"a":"1"},"values":[]},{"metric":{"a":"1"},"values":[]}"#), Err("appears twice"));
        check(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#, Err("not a matrix"));
        check(r#"{"status":"error","errorType":"bad_data","error":"no"}"#, Err("not a success"));
        check("<html>", Err("not JSON"));
    }
}
