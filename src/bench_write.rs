//! `sextant bench-write`: a Remote-Write 1.0 load generator for any receiver (Sextant,
//! Prometheus with `--web.enable-remote-write-receiver`, VictoriaMetrics), used by
//! `ci/bench-peers` to send the same workload to each.
//!
//! The data is `sextant_core::testdata`'s node_exporter shape (the 505 series of a real
//! node_exporter 1.5 scrape per host, seeded values, per-host phase, 0–`jitter` ms timestamp
//! jitter), plus a classic histogram `http_request_duration_seconds` (10 buckets, `_sum`,
//! `_count`; buckets made cumulative over `le` as in `storage/benches/query.rs`) so that the
//! dashboard query set's `histogram_quantile` has data: 517 series per host.
//!
//! Order: every round of scrapes is sent in timestamp order across all hosts, so the stream is
//! in time order across all series (Prometheus 2.42 refuses samples far behind its newest as
//! out of bounds). Series are split over `--concurrency` senders by series index, as
//! Prometheus's remote-write shards do, so each series' samples stay in order even with
//! several requests in flight.
//!
//! Series churn: with `--churn-interval`, every interval the first `--churn-fraction` of the
//! hosts get a new generation in their `instance` label (`host-3-g2:9100`): their old series
//! stop, new ones start, as when pods are replaced.
//!
//! Refusals: 429 and 5xx are retried with backoff (up to `--retries` times), as Prometheus
//! does; other 4xx are not. Every refused response is counted by status; a sample counts as
//! accepted once a request holding it is answered 2xx.
//!
//! Freshness: with `--freshness-probes N`, after the load, single-sample writes to one series
//! `sextant_bench_freshness{seed="<seed>"}` at the current wall time with value = probe number;
//! for each, the time from the write's 2xx answer until `/api/v1/query` at that timestamp
//! returns that value (polled every `--freshness-poll-ms`). A first, unmeasured probe creates
//! the series: freshness is measured on an existing series, as a dashboard sees a scrape
//! (a brand-new series can take longer: VictoriaMetrics 1.79 refreshes its current-hour series
//! set every 10 s).
//!
//! Time and randomness: the data is a function of `--seed` and `--start-ms` alone (seeded
//! ChaCha8 through `sextant_core::determinism`); wall and monotonic time come from the one
//! `SystemClock`. The network part is real-only (`cfg(not(madsim))`): it measures a real
//! process; the workload builder is pure and tested in both builds.

use std::collections::BTreeMap;

use sextant_core::sample::TimestampMs;
use sextant_core::testdata::{histogram_layout, parse_exposition, GeneratorConfig, ScrapeGenerator, SeriesTemplate, ValueShape, HISTOGRAM_EXPOSITION, NODE_EXPORTER_1_5_SCRAPE};

use crate::remote_write::{Label, Sample, TimeSeries, WriteRequest};

/// Most hosts one run generates (505+13 series each): 10 M series is far beyond any target here.
pub const HOSTS_MAX: usize = 20_000;
/// Largest request, in samples (Prometheus sends 500–2,000; receivers cap bodies at 32 MiB).
pub const BATCH_SAMPLES_MAX: usize = 100_000;
/// Most requests in flight.
pub const CONCURRENCY_MAX: usize = 64;

/// Flags of `sextant bench-write`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchWriteArgs {
    /// Remote-write URL, e.g. http://127.0.0.1:9480/api/v1/write. Freshness probes query the
    /// same host's /api/v1/query.
    #[arg(long)]
    pub url: String,
    /// Hosts (each 517 series).
    #[arg(long, default_value_t = 5)]
    pub hosts: usize,
    /// Span of data to send, e.g. 12h, 5m.
    #[arg(long, default_value = "1h")]
    pub duration: String,
    /// Scrape interval.
    #[arg(long, default_value = "15s")]
    pub interval: String,
    /// Largest timestamp jitter per scrape, in milliseconds (0 = exact intervals).
    #[arg(long, default_value_t = 3)]
    pub jitter_ms_max: i64,
    /// Every this long, the churned hosts get new series (0 = no churn).
    #[arg(long, default_value = "0")]
    pub churn_interval: String,
    /// Fraction of the hosts whose series churn.
    #[arg(long, default_value_t = 0.0)]
    pub churn_fraction: f64,
    /// Samples per request.
    #[arg(long, default_value_t = 2000)]
    pub batch_samples: usize,
    /// Requests in flight (series are split over senders, so each series stays in order).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Samples per second to send; 0 sends as fast as the target accepts.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seed of the data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Earliest timestamp, ms since the epoch. Default: now − duration − 1 min, so the data
    /// ends just before now.
    #[arg(long)]
    pub start_ms: Option<i64>,
    /// Retries of a request answered 429 or 5xx (or not answered).
    #[arg(long, default_value_t = 10)]
    pub retries: u32,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
    /// Freshness probes after the load (0 = none).
    #[arg(long, default_value_t = 0)]
    pub freshness_probes: usize,
    /// Poll period of a freshness probe, milliseconds.
    #[arg(long, default_value_t = 2)]
    pub freshness_poll_ms: u64,
    /// Give up on a freshness probe after this long, milliseconds (counted as a timeout).
    #[arg(long, default_value_t = 60_000)]
    pub freshness_timeout_ms: u64,
    /// Write the JSON report here (it is always printed on stdout too).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The resolved, validated workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub hosts: usize,
    pub start_ms: TimestampMs,
    pub duration_ms: i64,
    pub interval_ms: i64,
    pub jitter_ms_max: i64,
    pub churn_interval_ms: i64,
    pub churn_fraction: f64,
    pub batch_samples: usize,
    pub concurrency: usize,
    pub seed: u64,
}

impl Workload {
    /// Checks the flags; `now_ms` gives the default start.
    pub fn from_args(args: &BenchWriteArgs, now_ms: TimestampMs) -> Result<Workload, String> {
        let duration_ms = crate::duration::parse_duration_ms(&args.duration).map_err(|e| format!("--duration: {e}"))?;
        let interval_ms = crate::duration::parse_duration_ms(&args.interval).map_err(|e| format!("--interval: {e}"))?;
        let churn_interval_ms =
            crate::duration::parse_duration_ms(&args.churn_interval).map_err(|e| format!("--churn-interval: {e}"))?;
        if args.hosts == 0 || args.hosts > HOSTS_MAX {
            return Err(format!("--hosts {}: must be 1..={HOSTS_MAX}", args.hosts));
        }
        if interval_ms <= 0 {
            return Err("--interval must be positive".to_string());
        }
        if duration_ms < interval_ms {
            return Err(format!("--duration {} is shorter than one --interval {}", args.duration, args.interval));
        }
        if args.jitter_ms_max < 0 || args.jitter_ms_max >= interval_ms {
            return Err(format!("--jitter-ms-max {}: must be 0 or more and below the interval ({interval_ms} ms)", args.jitter_ms_max));
        }
        if !(0.0..=1.0).contains(&args.churn_fraction) {
            return Err(format!("--churn-fraction {}: must be between 0 and 1", args.churn_fraction));
        }
        if args.batch_samples == 0 || args.batch_samples > BATCH_SAMPLES_MAX {
            return Err(format!("--batch-samples {}: must be 1..={BATCH_SAMPLES_MAX}", args.batch_samples));
        }
        if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
            return Err(format!("--concurrency {}: must be 1..={CONCURRENCY_MAX}", args.concurrency));
        }
        let start_ms = args.start_ms.unwrap_or(now_ms - duration_ms - 60_000);
        Ok(Workload {
            hosts: args.hosts,
            start_ms,
            duration_ms,
            interval_ms,
            jitter_ms_max: args.jitter_ms_max,
            churn_interval_ms,
            churn_fraction: args.churn_fraction,
            batch_samples: args.batch_samples,
            concurrency: args.concurrency,
            seed: args.seed,
        })
    }

    pub fn rounds(&self) -> u64 {
        (self.duration_ms / self.interval_ms) as u64
    }

    pub fn series_per_host() -> usize {
        templates().len()
    }

    /// Samples the whole run sends.
    pub fn samples(&self) -> u64 {
        self.rounds() * (self.hosts * Self::series_per_host()) as u64
    }

    /// Hosts whose series churn (the first ones).
    fn churned_hosts(&self) -> usize {
        if self.churn_interval_ms <= 0 {
            return 0;
        }
        (self.hosts as f64 * self.churn_fraction).round() as usize
    }
}

/// The node_exporter scrape's series plus the histogram.
pub fn templates() -> Vec<SeriesTemplate> {
    let mut out = parse_exposition(NODE_EXPORTER_1_5_SCRAPE).expect("the bundled scrape parses");
    out.extend(parse_exposition(HISTOGRAM_EXPOSITION).expect("the histogram text parses"));
    out
}

/// One sample of the stream: series index (global), timestamp, value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamSample {
    pub series: usize,
    pub t: TimestampMs,
    pub value: f64,
}

/// Produces the workload's samples round by round, in time order, and the labels of each
/// series (which change when a host churns).
pub struct Stream {
    workload: Workload,
    generator: ScrapeGenerator,
    per_host: usize,
    buckets: Vec<usize>,
    count: usize,
    /// Per host: the generation in its `instance` label.
    generations: Vec<u64>,
    /// Per series: its labels in remote-write form for the current generation.
    labels: Vec<Vec<Label>>,
    /// (host, generation) pairs started so far: each is one host's full series set.
    generations_started: u64,
    round: u64,
}

impl Stream {
    pub fn new(workload: &Workload) -> Stream {
        let templates = templates();
        let (buckets, count) = histogram_layout(&templates);
        let config = GeneratorConfig {
            hosts: workload.hosts,
            start_ms: workload.start_ms,
            interval_ms: workload.interval_ms,
            jitter_ms_max: workload.jitter_ms_max,
            values: ValueShape::NodeExporter,
        };
        let generator = ScrapeGenerator::new(config, &templates, workload.seed);
        let per_host = templates.len();
        let mut stream = Stream {
            workload: workload.clone(),
            generator,
            per_host,
            buckets,
            count,
            generations: vec![0; workload.hosts],
            labels: vec![Vec::new(); workload.hosts * per_host],
            generations_started: 0,
            round: 0,
        };
        for host in 0..workload.hosts {
            stream.relabel(host);
        }
        stream
    }

    fn relabel(&mut self, host: usize) {
        self.generations_started += 1;
        let generation = self.generations[host];
        for index in host * self.per_host..(host + 1) * self.per_host {
            let series = &self.generator.series()[index];
            self.labels[index] = series
                .labels
                .iter()
                .map(|l| {
                    let value = if l.name == "instance" && generation > 0 {
                        format!("host-{host}-g{generation}:9100")
                    } else {
                        l.value.to_string()
                    };
                    Label { name: l.name.to_string(), value }
                })
                .collect();
        }
    }

    /// Distinct series the stream has produced so far (churn adds series).
    pub fn series_started(&self) -> u64 {
        self.generations_started * self.per_host as u64
    }

    /// Labels of series `index` now.
    pub fn labels(&self, index: usize) -> &[Label] {
        &self.labels[index]
    }

    /// The next round's samples in time order, or `None` after the last round.
    pub fn next_round(&mut self) -> Option<Vec<StreamSample>> {
        if self.round >= self.workload.rounds() {
            return None;
        }
        self.round += 1;
        let mut scrapes = self.generator.next_round();
        scrapes.sort_by_key(|s| (s.t, s.host));
        let churned = self.workload.churned_hosts();
        let mut out = Vec::with_capacity(scrapes.len() * self.per_host);
        for mut scrape in scrapes {
            if scrape.host < churned {
                let generation = ((scrape.t - self.workload.start_ms) / self.workload.churn_interval_ms).max(0) as u64;
                if generation != self.generations[scrape.host] {
                    self.generations[scrape.host] = generation;
                    self.relabel(scrape.host);
                }
            }
            // Buckets cumulative over `le`; `_count` equals the `+Inf` bucket.
            let mut total = 0.0;
            for &b in &self.buckets {
                total += scrape.values[b];
                scrape.values[b] = total;
            }
            scrape.values[self.count] = total;
            let base = scrape.host * self.per_host;
            out.extend(scrape.values.iter().enumerate().map(|(i, &value)| StreamSample { series: base + i, t: scrape.t, value }));
        }
        Some(out)
    }
}

/// Groups a batch's samples into one request, series in order of first appearance... sorted by
/// series index so the request bytes do not depend on anything but the batch.
pub fn build_request(stream: &Stream, batch: &[StreamSample]) -> WriteRequest {
    let mut by_series: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    for s in batch {
        by_series.entry(s.series).or_default().push(Sample { value: s.value, timestamp: s.t });
    }
    WriteRequest {
        timeseries: by_series
            .into_iter()
            .map(|(series, samples)| TimeSeries { labels: stream.labels(series).to_vec(), samples, exemplars: Vec::new(), histograms: Vec::new() })
            .collect(),
        metadata: Vec::new(),
    }
}

/// `q`-quantile (0..=1) of sorted values, nearest rank; 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(not(madsim))]
pub use real::run;

#[cfg(not(madsim))]
mod real {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use sextant_core::clock::Clock;
    use sextant_storage::clock::SystemClock;
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    use super::*;
    use crate::remote_write::encode_write_request;

    /// Target address parsed from the URL.
    #[derive(Debug, Clone)]
    struct Target {
        /// `host:port` for the connection and the Host header.
        authority: String,
        write_path: String,
    }

    fn parse_url(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("--url {url:?}: only http:// is supported"));
        }
        let authority = uri.authority().ok_or_else(|| format!("--url {url:?}: no host"))?.to_string();
        let authority = if authority.contains(':') { authority } else { format!("{authority}:80") };
        Ok(Target { authority, write_path: uri.path().to_string() })
    }

    /// One keep-alive HTTP/1 connection, reopened after any failure.
    struct Connection {
        authority: String,
        sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    }

    impl Connection {
        fn new(authority: &str) -> Self {
            Connection { authority: authority.to_string(), sender: None }
        }

        async fn exchange(&mut self, request: http::Request<Full<Bytes>>) -> Result<(u16, Bytes), String> {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = TcpStream::connect(&self.authority).await.map_err(|e| format!("connect {}: {e}", self.authority))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                self.sender = Some(sender);
            }
            let sender = self.sender.as_mut().expect("set above");
            let result = async {
                sender.ready().await.map_err(|e| e.to_string())?;
                let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
                Ok((status, body))
            }
            .await;
            if result.is_err() {
                self.sender = None;
            }
            result
        }
    }

    #[derive(Debug, Default)]
    struct Stats {
        requests: u64,
        samples_accepted: u64,
        samples_dropped: u64,
        /// Microseconds per answered attempt.
        latencies_us: Vec<u64>,
        /// Status (or "error") → count.
        refusals: BTreeMap<String, u64>,
        /// First refusal bodies, for the log.
        refusal_examples: Vec<String>,
    }

    fn write_request(target: &Target, body: Bytes) -> http::Request<Full<Bytes>> {
        http::Request::post(&target.write_path)
            .header("host", &target.authority)
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .header("user-agent", "sextant-bench-write")
            .body(Full::new(body))
            .expect("a well-formed request")
    }

    /// Sends one request with retries; records everything in `stats`.
    async fn send_with_retries(
        connection: &mut Connection,
        target: &Target,
        body: Bytes,
        samples: u64,
        args: &BenchWriteArgs,
        clock: &SystemClock,
        stats: &Mutex<Stats>,
    ) -> bool {
        let mut backoff_ms = 50;
        for attempt in 0..=args.retries {
            let started = clock.now_monotonic_ns();
            let outcome =
                tokio::time::timeout(Duration::from_millis(args.timeout_ms), connection.exchange(write_request(target, body.clone()))).await;
            let elapsed_us = (clock.now_monotonic_ns() - started) / 1_000;
            let (retry, key, text) = match outcome {
                Ok(Ok((status, response))) => {
                    let mut stats = stats.lock().expect("stats lock");
                    stats.requests += 1;
                    stats.latencies_us.push(elapsed_us);
                    if (200..300).contains(&status) {
                        stats.samples_accepted += samples;
                        return true;
                    }
                    (status == 429 || status >= 500, status.to_string(), String::from_utf8_lossy(&response).into_owned())
                }
                Ok(Err(error)) => {
                    connection.sender = None;
                    (true, "error".to_string(), error)
                }
                Err(_) => {
                    connection.sender = None;
                    (true, "timeout".to_string(), format!("no answer in {} ms", args.timeout_ms))
                }
            };
            {
                let mut stats = stats.lock().expect("stats lock");
                *stats.refusals.entry(key.clone()).or_default() += 1;
                if stats.refusal_examples.len() < 5 {
                    stats.refusal_examples.push(format!("{key}: {}", text.trim().chars().take(300).collect::<String>()));
                }
            }
            if !retry || attempt == args.retries {
                break;
            }
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(2_000);
        }
        stats.lock().expect("stats lock").samples_dropped += samples;
        false
    }

    /// GET `path_and_query`; the body on 200.
    async fn get(connection: &mut Connection, authority: &str, path_and_query: &str) -> Result<(u16, Bytes), String> {
        let request = http::Request::get(path_and_query)
            .header("host", authority)
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("bad query path {path_and_query:?}: {e}"))?;
        connection.exchange(request).await
    }

    /// The value of the first series of an instant-query answer.
    fn result_value(body: &[u8]) -> Option<f64> {
        let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
        answer.get("data")?.get("result")?.get(0)?.get("value")?.get(1)?.as_str()?.parse().ok()
    }

    /// Freshness probes; milliseconds (fractional) per probe that became visible, and the
    /// number that did not within the timeout.
    async fn freshness(target: &Target, args: &BenchWriteArgs, clock: &SystemClock, stats: &Mutex<Stats>) -> (Vec<u64>, u64) {
        let mut write = Connection::new(&target.authority);
        let mut read = Connection::new(&target.authority);
        let mut visible_us = Vec::new();
        let mut timeouts = 0;
        let mut previous_t = i64::MIN;
        // Probe 0 creates the series and is not measured.
        for probe in 0..=args.freshness_probes {
            let t = clock.now_wall_ms().max(previous_t + 1);
            previous_t = t;
            let request = WriteRequest {
                timeseries: vec![TimeSeries {
                    labels: vec![
                        Label { name: "__name__".into(), value: "sextant_bench_freshness".into() },
                        Label { name: "seed".into(), value: args.seed.to_string() },
                    ],
                    samples: vec![Sample { value: probe as f64, timestamp: t }],
                    exemplars: Vec::new(),
                    histograms: Vec::new(),
                }],
                metadata: Vec::new(),
            };
            let body = Bytes::from(encode_write_request(&request));
            if !send_with_retries(&mut write, target, body, 1, args, clock, stats).await {
                timeouts += u64::from(probe > 0);
                continue;
            }
            let acked = clock.now_monotonic_ns();
            let query = format!("sextant_bench_freshness{{seed=\"{}\"}}", args.seed);
            let path = format!(
                "/api/v1/query?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("query", &query)
                    .append_pair("time", &format!("{}.{:03}", t.div_euclid(1000), t.rem_euclid(1000)))
                    .finish()
            );
            let mut seen = false;
            loop {
                if let Ok((200, body)) = get(&mut read, &target.authority, &path).await {
                    if result_value(&body) == Some(probe as f64) {
                        seen = true;
                        break;
                    }
                }
                if clock.now_monotonic_ns() - acked > args.freshness_timeout_ms * 1_000_000 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(args.freshness_poll_ms)).await;
            }
            if probe == 0 {
                continue;
            }
            if seen {
                visible_us.push((clock.now_monotonic_ns() - acked) / 1_000);
            } else {
                timeouts += 1;
            }
        }
        visible_us.sort_unstable();
        (visible_us, timeouts)
    }

    struct Pace<'a> {
        /// Samples per second; 0 = no pacing.
        rate: u64,
        started_ns: u64,
        clock: &'a SystemClock,
    }

    /// Encodes `batch` (emptying it) and queues it for its sender, at the fixed rate if any.
    async fn enqueue(
        queue: &mpsc::Sender<(Bytes, u64)>,
        batch: &mut Vec<StreamSample>,
        stream: &Stream,
        pace: Pace<'_>,
        enqueued: &mut u64,
    ) -> Result<(), String> {
        let body = Bytes::from(encode_write_request(&build_request(stream, batch)));
        let samples = batch.len() as u64;
        batch.clear();
        if pace.rate > 0 {
            // Fixed rate: the n-th sample leaves no earlier than n / rate after the start.
            let due_ns = pace.started_ns + *enqueued * 1_000_000_000 / pace.rate;
            let now_ns = pace.clock.now_monotonic_ns();
            if due_ns > now_ns {
                tokio::time::sleep(Duration::from_nanos(due_ns - now_ns)).await;
            }
        }
        *enqueued += samples;
        queue.send((body, samples)).await.map_err(|_| "a sender task ended early".to_string())
    }

    /// Runs the load; returns the JSON report, or an error message for bad flags or a target
    /// that never answered.
    pub async fn run(args: &BenchWriteArgs) -> Result<serde_json::Value, String> {
        let clock = Arc::new(SystemClock::new());
        let target = parse_url(&args.url)?;
        let workload = Workload::from_args(args, clock.now_wall_ms())?;
        let stats = Arc::new(Mutex::new(Stats::default()));
        let total = workload.samples();
        let progress = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
        progress.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} {bar:40} {human_pos}/{human_len} samples ({per_sec}, eta {eta})")
                .expect("a valid template"),
        );

        // One sender task per shard of the series, each with its own connection.
        let mut queues = Vec::with_capacity(workload.concurrency);
        let mut senders = Vec::with_capacity(workload.concurrency);
        for _ in 0..workload.concurrency {
            // A short queue: generation runs at most two requests ahead of each sender.
            let (tx, mut rx) = mpsc::channel::<(Bytes, u64)>(2);
            queues.push(tx);
            let (target, args, clock, stats, progress) = (target.clone(), args.clone(), clock.clone(), stats.clone(), progress.clone());
            senders.push(tokio::spawn(async move {
                let mut connection = Connection::new(&target.authority);
                while let Some((body, samples)) = rx.recv().await {
                    send_with_retries(&mut connection, &target, body, samples, &args, &clock, &stats).await;
                    progress.inc(samples);
                }
            }));
        }

        let mut stream = Stream::new(&workload);
        let mut pending: Vec<Vec<StreamSample>> = vec![Vec::with_capacity(workload.batch_samples); workload.concurrency];
        let started_ns = clock.now_monotonic_ns();
        let mut enqueued: u64 = 0;
        let mut first_t = i64::MAX;
        let mut last_t = i64::MIN;
        while let Some(round) = stream.next_round() {
            for sample in round {
                first_t = first_t.min(sample.t);
                last_t = last_t.max(sample.t);
                let shard = sample.series % workload.concurrency;
                pending[shard].push(sample);
                if pending[shard].len() >= workload.batch_samples {
                    let pace = Pace { rate: args.rate, started_ns, clock: &clock };
                    enqueue(&queues[shard], &mut pending[shard], &stream, pace, &mut enqueued).await?;
                }
            }
        }
        for shard in 0..workload.concurrency {
            if !pending[shard].is_empty() {
                let pace = Pace { rate: args.rate, started_ns, clock: &clock };
                enqueue(&queues[shard], &mut pending[shard], &stream, pace, &mut enqueued).await?;
            }
        }
        drop(queues);
        for sender in senders {
            sender.await.map_err(|e| format!("sender task: {e}"))?;
        }
        let elapsed_s = (clock.now_monotonic_ns() - started_ns) as f64 / 1e9;
        progress.finish_and_clear();

        // The load's figures are final here; the probes keep their own counts.
        let mut stats = std::mem::take(&mut *stats.lock().expect("stats lock"));
        let probe_stats = Mutex::new(Stats::default());
        let (fresh_us, fresh_timeouts) =
            if args.freshness_probes > 0 { freshness(&target, args, &clock, &probe_stats).await } else { (Vec::new(), 0) };

        stats.latencies_us.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let rate = stats.samples_accepted as f64 / elapsed_s.max(1e-9);
        let report = serde_json::json!({
            "url": args.url,
            "workload": {
                "hosts": workload.hosts,
                "series_per_host": Workload::series_per_host(),
                "series": stream.series_started(),
                "start_ms": workload.start_ms,
                "first_sample_ms": first_t,
                "last_sample_ms": last_t,
                "duration_ms": workload.duration_ms,
                "interval_ms": workload.interval_ms,
                "jitter_ms_max": workload.jitter_ms_max,
                "churn_interval_ms": workload.churn_interval_ms,
                "churn_fraction": workload.churn_fraction,
                "batch_samples": workload.batch_samples,
                "concurrency": workload.concurrency,
                "rate_samples_per_s": args.rate,
                "seed": workload.seed,
                "samples": total,
            },
            "elapsed_s": elapsed_s,
            "requests": stats.requests,
            "samples_accepted": stats.samples_accepted,
            "samples_dropped": stats.samples_dropped,
            "accepted_samples_per_s": rate,
            "latency_ms": {
                "p50": ms(quantile(&stats.latencies_us, 0.5)),
                "p99": ms(quantile(&stats.latencies_us, 0.99)),
                "max": ms(stats.latencies_us.last().copied().unwrap_or(0)),
            },
            "refusals": stats.refusals,
            "refusal_examples": stats.refusal_examples,
            "freshness_ms": {
                "probes": args.freshness_probes,
                "visible": fresh_us.len(),
                "timeouts": fresh_timeouts,
                "p50": ms(quantile(&fresh_us, 0.5)),
                "p99": ms(quantile(&fresh_us, 0.99)),
                "max": ms(fresh_us.last().copied().unwrap_or(0)),
            },
        });
        let refusals: Vec<String> = report["refusals"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!(
            "bench-write: {} of {} samples accepted in {:.1} s = {:.0} samples/s; request latency p50 {:.1} ms p99 {:.1} ms; refusals: {}; freshness p50 {:.1} ms p99 {:.1} ms ({} of {} probes visible)",
            stats.samples_accepted,
            total,
            elapsed_s,
            rate,
            ms(quantile(&stats.latencies_us, 0.5)),
            ms(quantile(&stats.latencies_us, 0.99)),
            if refusals.is_empty() { "none".to_string() } else { refusals.join(" ") },
            ms(quantile(&fresh_us, 0.5)),
            ms(quantile(&fresh_us, 0.99)),
            fresh_us.len(),
            args.freshness_probes,
        );
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&report).expect("JSON serializes"))
                .map_err(|e| format!("--json {}: {e}", path.display()))?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchWriteArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchWriteArgs,
        }
        let mut argv = vec!["bench-write", "--url", "http://127.0.0.1:1/api/v1/write"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("flags parse").args
    }

    const NOW_MS: i64 = 1_800_000_000_000;

    // Goal: bad flags are refused with a message naming the flag; good ones resolve.
    #[test]
    fn workload_flags() {
        fn check(extra: &[&str], expected: Result<(), &str>) {
            match (Workload::from_args(&args(extra), NOW_MS), expected) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{extra:?}: {e}"),
                (got, want) => panic!("{extra:?}: got {got:?}, want {want:?}"),
            }
        }
        check(&[], Ok(()));
        check(&["--hosts", "0"], Err("--hosts 0"));
        check(&["--duration", "10s"], Err("shorter than one --interval"));
        check(&["--interval", "0"], Err("--interval must be positive"));
        check(&["--duration", "soon"], Err("--duration"));
        check(&["--jitter-ms-max", "15000"], Err("--jitter-ms-max"));
        check(&["--churn-fraction", "1.5"], Err("--churn-fraction"));
        check(&["--batch-samples", "0"], Err("--batch-samples"));
        check(&["--concurrency", "65"], Err("--concurrency"));
        let w = Workload::from_args(&args(&["--duration", "12h"]), NOW_MS).unwrap();
        assert_eq!(w.start_ms, NOW_MS - 12 * 3_600_000 - 60_000);
        assert_eq!(w.rounds(), 2880);
        assert_eq!(Workload::series_per_host(), 505 + 12);
        assert_eq!(w.samples(), 2880 * 5 * 517);
    }

    fn collect(extra: &[&str]) -> (Stream, Vec<StreamSample>) {
        let w = Workload::from_args(&args(extra), NOW_MS).unwrap();
        let mut stream = Stream::new(&w);
        let mut all = Vec::new();
        while let Some(round) = stream.next_round() {
            all.extend(round);
        }
        (stream, all)
    }

    // Goal: the stream is in time order across series (within the jitter), every series'
    // timestamps strictly increase, and the sample count is what the workload says.
    #[test]
    fn stream_is_time_ordered() {
        let (_, all) = collect(&["--hosts", "3", "--duration", "5m", "--start-ms", "1000000"]);
        assert_eq!(all.len() as u64, 20 * 3 * 517);
        let mut newest = BTreeMap::new();
        let mut stream_newest = all[0].t;
        for s in &all {
            assert!(s.t >= stream_newest - 3, "sample at {} after {}", s.t, stream_newest);
            stream_newest = stream_newest.max(s.t);
            if let Some(prev) = newest.insert(s.series, s.t) {
                assert!(s.t > prev, "series {} went from {prev} to {}", s.series, s.t);
            }
        }
        assert_eq!(newest.len(), 3 * 517);
    }

    // Goal: the same seed and start give the same bytes; another seed does not.
    #[test]
    fn stream_is_reproducible() {
        let body = |seed: &str| {
            let (stream, all) = collect(&["--hosts", "2", "--duration", "2m", "--start-ms", "5000000", "--seed", seed]);
            crate::remote_write::encode_write_request(&build_request(&stream, &all))
        };
        assert_eq!(body("7"), body("7"));
        assert_ne!(body("7"), body("8"));
    }

    // Goal: histogram buckets are cumulative over `le` and `_count` equals `+Inf`, at every scrape.
    #[test]
    fn histogram_is_cumulative() {
        let (stream, all) = collect(&["--hosts", "2", "--duration", "3m", "--start-ms", "1000000"]);
        let mut by_scrape: BTreeMap<(i64, String), Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<(i64, String), f64> = BTreeMap::new();
        for s in &all {
            let labels = stream.labels(s.series);
            let get = |n: &str| labels.iter().find(|l| l.name == n).map(|l| l.value.clone()).unwrap_or_default();
            let key = (s.t, get("instance"));
            match get("__name__").as_str() {
                "http_request_duration_seconds_bucket" => {
                    let le = get("le");
                    let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
                    by_scrape.entry(key).or_default().push((le, s.value));
                }
                "http_request_duration_seconds_count" => {
                    counts.insert(key, s.value);
                }
                _ => {}
            }
        }
        assert_eq!(by_scrape.len(), 2 * 12);
        for (key, mut buckets) in by_scrape {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert_eq!(buckets.len(), 10);
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{key:?}: {buckets:?}");
            assert_eq!(counts[&key], buckets[9].1, "{key:?}");
        }
    }

    // Goal: churn gives the churned hosts new series each interval and leaves the others alone.
    #[test]
    fn churn_replaces_series() {
        // Labels are read as each round comes out: a churned host's labels change between rounds.
        let instances = |extra: &[&str]| {
            let w = Workload::from_args(&args(extra), NOW_MS).unwrap();
            let mut stream = Stream::new(&w);
            let mut seen = std::collections::BTreeSet::new();
            while let Some(round) = stream.next_round() {
                for s in &round {
                    seen.insert(stream.labels(s.series).iter().find(|l| l.name == "instance").unwrap().value.clone());
                }
            }
            (seen.into_iter().collect::<Vec<_>>(), stream.series_started())
        };
        let base = ["--hosts", "2", "--duration", "3m", "--start-ms", "1000000"];
        assert_eq!(instances(&base), (vec!["host-0:9100".to_string(), "host-1:9100".to_string()], 2 * 517));
        let churned = [&base[..], &["--churn-interval", "1m", "--churn-fraction", "0.5"]].concat();
        let expected: Vec<String> =
            ["host-0-g1:9100", "host-0-g2:9100", "host-0:9100", "host-1:9100"].iter().map(|s| s.to_string()).collect();
        assert_eq!(instances(&churned), (expected, 4 * 517));
    }

    // Goal: a request groups the batch by series, in series order, with every sample once.
    #[test]
    fn request_groups_by_series() {
        let w = Workload::from_args(&args(&["--hosts", "1", "--duration", "1m", "--start-ms", "0"]), NOW_MS).unwrap();
        let mut stream = Stream::new(&w);
        let mut batch = stream.next_round().unwrap();
        batch.extend(stream.next_round().unwrap());
        let request = build_request(&stream, &batch);
        assert_eq!(request.timeseries.len(), 517);
        assert!(request.timeseries.iter().all(|ts| ts.samples.len() == 2 && ts.samples[0].timestamp < ts.samples[1].timestamp));
        assert_eq!(request.timeseries[0].labels, stream.labels(0));
    }

    #[test]
    fn quantiles() {
        fn check(values: &[u64], q: f64, expected: u64) {
            assert_eq!(quantile(values, q), expected, "{values:?} q={q}");
        }
        check(&[], 0.5, 0);
        check(&[7], 0.99, 7);
        check(&[1, 2, 3, 4], 0.5, 2);
        check(&(1..=100).collect::<Vec<_>>(), 0.99, 99);
        check(&(1..=100).collect::<Vec<_>>(), 1.0, 100);
    }
}
