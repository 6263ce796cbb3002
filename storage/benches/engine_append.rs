//! Append throughput through `Engine::append` on the real filesystem (a data directory under
//! cargo's target tmp dir, on the real disk), in samples/s. Measures; asserts nothing beyond
//! "no sample was refused".
//!
//! Data: node_exporter-shaped (5 hosts × 505 series, `sextant_core::testdata`), sent as
//! remote-write-sized requests of 4 host scrapes = 2,020 samples, one sample per series entry,
//! to one shard, with a `ManualClock` following the data. The engine runs on a current-thread
//! tokio runtime (one core); RealFs's write and fsync calls run on tokio's blocking threads.
//! Building a request (label clones) is outside the timed region.
//!
//! Cases:
//! - `always/in_flight_1`: fsync policy `always` (the default), one request at a time: every
//!   request waits for its own fsync.
//! - `always/in_flight_4`: `always`, 4 requests in flight at once: group commit lets them share
//!   a write and an fsync.
//! - `interval_1000ms/in_flight_1`: fsync policy `interval` (1 s): a request waits for the
//!   write, not the fsync.
//!
//! Run: `cargo bench -p sextant-storage --bench engine_append`.

#[cfg(not(madsim))]
mod common;

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
criterion::criterion_main!(append::benches);

#[cfg(not(madsim))]
mod append {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use criterion::{criterion_group, Criterion, Throughput};
    use sextant_core::testdata::{GeneratorConfig, ScrapeGenerator};
    use sextant_storage::engine::{Engine, EngineConfig};
    use sextant_storage::fs::real::RealFs;
    use sextant_storage::fs::FileSystem;
    use sextant_storage::wal::{FsyncPolicy, WalConfig};

    use crate::common::{data_dir, manual_clock, runtime, send, RequestStream, START_MS};

    const HOSTS: usize = 5;
    const SCRAPES_PER_REQUEST: usize = 4;
    const SAMPLES_PER_REQUEST: u64 = 4 * 505;

    fn bench_case(c: &mut Criterion, policy_name: &str, fsync: FsyncPolicy, in_flight: usize) {
        let dir = data_dir(&format!("append-{policy_name}-{in_flight}"));
        let rt = runtime();
        let clock = manual_clock();
        let fs: Arc<dyn FileSystem> = Arc::new(RealFs::new(&dir));
        let config =
            EngineConfig { shard_ids: vec![0], wal: WalConfig { fsync, ..WalConfig::default() }, retention_ms: None, ..EngineConfig::default() };
        let engine = rt.block_on(Engine::open(fs, clock.clone(), config)).expect("open");
        let generator = ScrapeGenerator::node_exporter(GeneratorConfig::node_exporter(HOSTS, START_MS), 1);
        // Far more rounds than a run uses.
        let mut stream = RequestStream::new(generator, 1, u64::MAX, SCRAPES_PER_REQUEST);
        // Series creation happens in the first rounds; take it out of the steady state.
        rt.block_on(async {
            for _ in 0..4 {
                send(&engine, &clock, stream.next_request().expect("endless")).await;
            }
        });

        let mut group = c.benchmark_group(policy_name);
        group.throughput(Throughput::Elements(SAMPLES_PER_REQUEST * in_flight as u64));
        group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
        group.bench_function(format!("in_flight_{in_flight}"), |b| {
            b.iter_custom(|iterations| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iterations {
                    let requests: Vec<_> = (0..in_flight).map(|_| stream.next_request().expect("endless")).collect();
                    assert!(requests.iter().all(|r| r.samples as u64 == SAMPLES_PER_REQUEST));
                    let started = Instant::now();
                    rt.block_on(async {
                        let handles: Vec<_> = requests
                            .into_iter()
                            .map(|request| {
                                let (engine, clock) = (engine.clone(), clock.clone());
                                tokio::spawn(async move { send(&engine, &clock, request).await })
                            })
                            .collect();
                        for handle in handles {
                            handle.await.expect("append task");
                        }
                    });
                    elapsed += started.elapsed();
                }
                elapsed
            })
        });
        group.finish();
        println!("{policy_name}/in_flight_{in_flight}: WAL stats after the run: {:?}", engine.wal_stats());
        rt.block_on(engine.close()).expect("close");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn append_benches(c: &mut Criterion) {
        bench_case(c, "always", FsyncPolicy::Always, 1);
        bench_case(c, "always", FsyncPolicy::Always, 4);
        bench_case(c, "interval_1000ms", FsyncPolicy::Interval { interval_ms: 1000 }, 1);
    }

    criterion_group!(benches, append_benches);
}
