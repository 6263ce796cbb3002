//! The client-side ledger: every write attempt, per node, as acked, refused, retryable or
//! unknown, and the oracles that compare what a node answers with what clients did.
//!
//! Plain data in both builds, so the oracles are unit-tested without a simulation.

use std::collections::{BTreeMap, BTreeSet};

/// A series as the oracles name it: its labels sorted by name, `{a="1",b="2"}`.
pub fn series_key<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = labels.into_iter().collect();
    pairs.sort();
    let inner: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// One sample as a client sent it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WrittenSample {
    pub series: String,
    pub t: i64,
    /// `f64::to_bits` of the value: the oracles compare bits, so NaN and stale markers count.
    pub bits: u64,
}

/// What a write attempt came to, from the client's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: every sample is stored (or was already).
    Acked,
    /// 4xx other than 429: not retried; the samples not named in the message may be stored.
    Refused { status: u16, message: String },
    /// 429/5xx: retried; any of the samples may be stored.
    Retryable { status: u16 },
    /// Timeout or connection error: any of the samples may be stored.
    Unknown { reason: String },
}

impl Outcome {
    pub fn from_status(status: u16, message: String) -> Outcome {
        match status {
            200..=299 => Outcome::Acked,
            429 | 500..=599 => Outcome::Retryable { status },
            _ => Outcome::Refused { status, message },
        }
    }

    /// The name used in counters and the trace.
    pub fn label(&self) -> String {
        match self {
            Outcome::Acked => "acked".into(),
            Outcome::Refused { status, .. } => format!("refused-{status}"),
            Outcome::Retryable { status } => format!("retryable-{status}"),
            Outcome::Unknown { .. } => "unknown".into(),
        }
    }
}

/// What one node was sent.
#[derive(Debug, Default)]
pub struct NodeLedger {
    /// series → t → every value (bits) ever sent for it.
    pub attempted: BTreeMap<String, BTreeMap<i64, BTreeSet<u64>>>,
    /// series → t → (bits, simulated ms of the first ack).
    pub acked: BTreeMap<String, BTreeMap<i64, (u64, u64)>>,
    /// Outcome label → attempts.
    pub outcomes: BTreeMap<String, u64>,
    /// Refusal messages that carried a time-acceptance reason (the skew oracle reads them).
    pub time_refusals: u64,
    pub samples_acked: u64,
}

/// Every node's ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    pub nodes: BTreeMap<usize, NodeLedger>,
    pub attempts: u64,
}

impl Ledger {
    /// Notes that `samples` are about to be sent to `node` (call before sending, so a crash of
    /// the client between send and record cannot hide a sample the node may have stored).
    pub fn attempt(&mut self, node: usize, samples: &[WrittenSample]) {
        self.attempts += 1;
        let ledger = self.nodes.entry(node).or_default();
        for s in samples {
            ledger.attempted.entry(s.series.clone()).or_default().entry(s.t).or_default().insert(s.bits);
        }
    }

    /// Records the outcome of an attempt finished at simulated `now_ms`.
    pub fn finish(&mut self, node: usize, samples: &[WrittenSample], outcome: &Outcome, now_ms: u64) {
        let ledger = self.nodes.entry(node).or_default();
        *ledger.outcomes.entry(outcome.label()).or_default() += 1;
        match outcome {
            Outcome::Acked => {
                for s in samples {
                    ledger.samples_acked += 1;
                    ledger.acked.entry(s.series.clone()).or_default().entry(s.t).or_insert((s.bits, now_ms));
                }
            }
            Outcome::Refused { message, .. } if message.contains("the node's clock") => ledger.time_refusals += 1,
            _ => {}
        }
    }
}

/// One series of a node's answer: (t, bits) in the order returned.
pub type Answer = BTreeMap<String, Vec<(i64, u64)>>;

/// An oracle violation: which oracle, and the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub oracle: &'static str,
    pub evidence: String,
}

/// Evidence lines quoted per oracle and check.
const EVIDENCE_MAX: usize = 5;

/// Prometheus's staleness marker (a NaN with this exact bit pattern).
const STALE_BITS: u64 = sextant_core::sample::STALE_NAN_BITS;

/// How an answer was read, which decides what "the same value" can mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// Straight from storage (`Engine::select`): values compare bit for bit, staleness markers
    /// included.
    Storage,
    /// Through the Prometheus query API: values travel as decimal strings, so every NaN reads
    /// back as one NaN (payloads cannot survive) and staleness markers are never returned
    /// (PromQL drops them from range selectors), so an acked marker is not expected and a
    /// returned value never matches one.
    QueryApi,
}

impl ReadPath {
    /// True when `returned` is what a read on this path gives for a stored `written`.
    fn matches(self, written: u64, returned: u64) -> bool {
        match self {
            ReadPath::Storage => written == returned,
            ReadPath::QueryApi if written == STALE_BITS => false,
            ReadPath::QueryApi if f64::from_bits(written).is_nan() => f64::from_bits(returned).is_nan(),
            ReadPath::QueryApi => written == returned,
        }
    }

    /// True when a stored `written` must appear in an answer read on this path.
    fn returns(self, written: u64) -> bool {
        self == ReadPath::Storage || written != STALE_BITS
    }
}

/// Acknowledged samples that a permanent loss may take (oracle 2). A wiped disk loses what its
/// node acknowledged as a shard's primary and had not yet streamed to the secondary: with
/// `--replication-lag-policy refuse`, samples acknowledged within `L` before the node's last
/// acknowledgement for the shard, or, where the node ran the shard unprotected (past `L`
/// because its secondary was known down), everything since that began.
/// docs/design/simulation.md § Wiped disks says how the windows are drawn.
#[derive(Clone, Debug, Default)]
pub struct LossAllowance {
    /// series key → shard (recorded as writers send, `replicated` only).
    pub shard_of: BTreeMap<String, u32>,
    /// shard → windows of acknowledgement times (simulated ms, inclusive) whose samples a loss may take.
    pub windows: BTreeMap<u32, Vec<(u64, u64)>>,
}

/// What the allowance says about one acknowledged sample missing from an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Its shard lost no disk: the sample must be there (oracle 1).
    Unaffected,
    /// Acknowledged inside a window of its shard: a loss may have taken it.
    Lost,
    /// Its shard lost a disk, but the sample was acknowledged outside every window (oracle 2).
    Outside { shard: u32, from_ms: u64, until_ms: u64 },
}

impl LossAllowance {
    pub fn judge(&self, series: &str, acked_ms: u64) -> Allowed {
        let Some(&shard) = self.shard_of.get(series) else { return Allowed::Unaffected };
        let Some(windows) = self.windows.get(&shard) else { return Allowed::Unaffected };
        if windows.iter().any(|&(from, until)| from <= acked_ms && acked_ms <= until) {
            return Allowed::Lost;
        }
        let &(from_ms, until_ms) = windows.last().expect("a shard's window list is never empty");
        Allowed::Outside { shard, from_ms, until_ms }
    }
}

/// The answer oracles' verdict on one answer.
#[derive(Clone, Debug, Default)]
pub struct Judged {
    pub violations: Vec<Violation>,
    /// Acknowledged samples missing from the answer that a lost disk's allowance covers.
    pub lost_within_allowance: usize,
}

/// Checks a node's answer covering all time against its ledger:
/// - oracle 1/10: every sample acked at or before `acked_before_ms` is in the answer with its value;
/// - oracle 2: a missing one is excused when `allowance` covers it (a lost disk's window of
///   its shard), and is a bounded-loss violation when its shard lost a disk outside it;
/// - oracle 3 (no phantoms): every returned (t, bits) was sent for that series;
/// - oracle 4 (no duplicates): per series, timestamps strictly increase.
///
/// "Its value" is as `path` can carry it (see [`ReadPath`]).
pub fn check_answer(node: usize, ledger: &NodeLedger, answer: &Answer, acked_before_ms: u64, path: ReadPath, allowance: &LossAllowance) -> Judged {
    let mut out = Vec::new();
    let mut lost_within_allowance = 0;
    let mut push = |oracle: &'static str, evidence: String, count: &mut usize| {
        *count += 1;
        if *count <= EVIDENCE_MAX {
            out.push(Violation { oracle, evidence });
        }
    };
    let (mut missing, mut phantoms, mut unordered, mut bounded) = (0, 0, 0, 0);
    for (series, samples) in answer {
        for pair in samples.windows(2) {
            if pair[1].0 <= pair[0].0 {
                push("4-no-duplicates", format!("node {node} series {series}: timestamp {} follows {}", pair[1].0, pair[0].0), &mut unordered);
            }
        }
        let sent = ledger.attempted.get(series);
        for &(t, bits) in samples {
            if !sent.and_then(|s| s.get(&t)).is_some_and(|values| values.iter().any(|&w| path.matches(w, bits))) {
                let sent_values: Vec<f64> = sent.and_then(|s| s.get(&t)).map(|v| v.iter().map(|b| f64::from_bits(*b)).collect()).unwrap_or_default();
                push(
                    "3-no-phantoms",
                    format!(
                        "node {node} series {series} t={t}: returned value {} (bits {bits:#x}) was never written (written there: {sent_values:?})",
                        f64::from_bits(bits)
                    ),
                    &mut phantoms,
                );
            }
        }
    }
    for (series, acked) in &ledger.acked {
        let returned: BTreeMap<i64, u64> = answer.get(series).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for (&t, &(bits, acked_ms)) in acked {
            if acked_ms > acked_before_ms || !path.returns(bits) {
                continue;
            }
            match returned.get(&t) {
                Some(&got) if path.matches(bits, got) => {}
                Some(&got) => push(
                    "1-acked-durability",
                    format!("node {node} series {series} t={t}: acked value bits {bits:#x} at {acked_ms} ms, answer has {got:#x}"),
                    &mut missing,
                ),
                None => match allowance.judge(series, acked_ms) {
                    Allowed::Lost => lost_within_allowance += 1,
                    Allowed::Outside { shard, from_ms, until_ms } => push(
                        "2-bounded-loss",
                        format!("node {node} series {series} (shard {shard}) t={t}: acked at {acked_ms} ms, missing from the answer; a lost disk may take shard {shard}'s samples acked from {from_ms} ms to {until_ms} ms only"),
                        &mut bounded,
                    ),
                    Allowed::Unaffected => push(
                        "1-acked-durability",
                        format!("node {node} series {series} t={t}: acked at {acked_ms} ms, missing from the answer"),
                        &mut missing,
                    ),
                },
            }
        }
    }
    for (oracle, count) in [("1-acked-durability", missing), ("2-bounded-loss", bounded), ("3-no-phantoms", phantoms), ("4-no-duplicates", unordered)] {
        if count > EVIDENCE_MAX {
            out.push(Violation {
                oracle,
                evidence: format!("node {node}: {} more like this", count - EVIDENCE_MAX),
            });
        }
    }
    Judged { violations: out, lost_within_allowance }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(series: &str, t: i64, v: f64) -> WrittenSample {
        WrittenSample {
            series: series.into(),
            t,
            bits: v.to_bits(),
        }
    }

    // Goal: the answer oracles flag exactly the violations planted in the answer. Method: one
    // ledger (two acked samples, one attempted-only), answers with one defect each.
    #[test]
    fn answer_oracles_flag_planted_defects() {
        let mut ledger = Ledger::default();
        let acked = vec![sample("a", 10, 1.0), sample("a", 20, f64::NAN)];
        let unknown = vec![sample("a", 30, 3.0)];
        ledger.attempt(0, &acked);
        ledger.finish(0, &acked, &Outcome::Acked, 100);
        ledger.attempt(0, &unknown);
        ledger.finish(0, &unknown, &Outcome::Unknown { reason: "timeout".into() }, 200);
        let node = &ledger.nodes[&0];
        let nan = f64::NAN.to_bits();
        fn check(node: &NodeLedger, answer: &[(i64, u64)], acked_before_ms: u64, expected: &[&str]) {
            let answer: Answer = [("a".to_string(), answer.to_vec())].into_iter().collect();
            let got: Vec<&str> = check_answer(0, node, &answer, acked_before_ms, ReadPath::Storage, &LossAllowance::default()).violations.iter().map(|v| v.oracle).collect();
            assert_eq!(got, expected, "answer {answer:?}");
        }
        check(node, &[(10, 1f64.to_bits()), (20, nan)], u64::MAX, &[]);
        check(node, &[(10, 1f64.to_bits()), (20, nan), (30, 3f64.to_bits())], u64::MAX, &[]);
        check(node, &[(10, 1f64.to_bits())], u64::MAX, &["1-acked-durability"]);
        check(node, &[(10, 1f64.to_bits())], 99, &[]);
        check(node, &[(10, 1f64.to_bits()), (20, nan), (25, 0)], u64::MAX, &["3-no-phantoms"]);
        check(node, &[(10, 2f64.to_bits()), (20, nan)], u64::MAX, &["3-no-phantoms", "1-acked-durability"]);
        check(node, &[(10, 1f64.to_bits()), (10, 1f64.to_bits()), (20, nan)], u64::MAX, &["4-no-duplicates"]);
    }

    // Goal: through the query API, any NaN answers a written NaN (payloads cannot survive
    // JSON), an acked staleness marker is not expected, and a returned value never matches a
    // marker; other values still compare bit for bit. Method: one ledger with a plain value,
    // a NaN with a payload and a marker, all acked; answers with one difference each.
    #[test]
    fn query_api_answers_compare_nan_as_nan_and_skip_markers() {
        let mut ledger = Ledger::default();
        let payload_nan = f64::from_bits(0x7ff8_0000_dead_beef);
        let written = vec![sample("a", 10, 1.0), sample("a", 20, payload_nan), sample("a", 30, f64::from_bits(STALE_BITS))];
        ledger.attempt(0, &written);
        ledger.finish(0, &written, &Outcome::Acked, 100);
        let node = &ledger.nodes[&0];
        let nan = f64::NAN.to_bits();
        fn check(node: &NodeLedger, answer: &[(i64, u64)], path: ReadPath, expected: &[&str]) {
            let answer: Answer = [("a".to_string(), answer.to_vec())].into_iter().collect();
            let got: Vec<&str> = check_answer(0, node, &answer, u64::MAX, path, &LossAllowance::default()).violations.iter().map(|v| v.oracle).collect();
            assert_eq!(got, expected, "{path:?} answer {answer:?}");
        }
        let one = 1f64.to_bits();
        check(node, &[(10, one), (20, nan)], ReadPath::QueryApi, &[]);
        check(node, &[(10, one), (20, payload_nan.to_bits()), (30, STALE_BITS)], ReadPath::Storage, &[]);
        check(node, &[(10, one), (20, nan)], ReadPath::Storage, &["3-no-phantoms", "1-acked-durability", "1-acked-durability"]);
        check(node, &[(10, one), (20, nan), (30, nan)], ReadPath::QueryApi, &["3-no-phantoms"]);
        check(node, &[(10, one), (20, 2f64.to_bits())], ReadPath::QueryApi, &["3-no-phantoms", "1-acked-durability"]);
        check(node, &[(10, one)], ReadPath::QueryApi, &["1-acked-durability"]);
    }

    // Goal: a lost disk's allowance excuses exactly the missing samples of its shards acked
    // inside a window; the same shard outside the window is oracle 2, another shard oracle 1,
    // and a value that differs is never excused.
    #[test]
    fn loss_allowance_excuses_only_its_windows() {
        let mut ledger = Ledger::default();
        let samples = vec![sample("a", 10, 1.0), sample("a", 20, 2.0), sample("b", 10, 1.0)];
        for (s, acked_ms) in samples.iter().zip([100, 200, 200]) {
            ledger.attempt(0, std::slice::from_ref(s));
            ledger.finish(0, std::slice::from_ref(s), &Outcome::Acked, acked_ms);
        }
        let allowance = LossAllowance {
            shard_of: [("a".to_string(), 1), ("b".to_string(), 2)].into_iter().collect(),
            windows: [(1, vec![(150, 300)])].into_iter().collect(),
        };
        let node = &ledger.nodes[&0];
        let check = |answer: &[(&str, i64, f64)], expected: &[&str], lost: usize| {
            let mut parsed = Answer::new();
            for &(series, t, v) in answer {
                parsed.entry(series.to_string()).or_default().push((t, v.to_bits()));
            }
            let judged = check_answer(0, node, &parsed, u64::MAX, ReadPath::Storage, &allowance);
            let got: Vec<&str> = judged.violations.iter().map(|v| v.oracle).collect();
            assert_eq!((got.as_slice(), judged.lost_within_allowance), (expected, lost), "answer {answer:?}: {:?}", judged.violations);
        };
        check(&[("a", 10, 1.0), ("a", 20, 2.0), ("b", 10, 1.0)], &[], 0);
        check(&[("a", 10, 1.0), ("b", 10, 1.0)], &[], 1);
        check(&[("a", 20, 2.0), ("b", 10, 1.0)], &["2-bounded-loss"], 0);
        check(&[("a", 10, 1.0), ("a", 20, 2.0)], &["1-acked-durability"], 0);
        check(&[("a", 10, 1.0), ("a", 20, 3.0), ("b", 10, 1.0)], &["3-no-phantoms", "1-acked-durability"], 0);
    }

    // Goal: series keys do not depend on label order.
    #[test]
    fn series_keys_sort_labels() {
        assert_eq!(series_key([("b", "2"), ("__name__", "x"), ("a", "1")]), "{__name__=\"x\",a=\"1\",b=\"2\"}");
    }
}
