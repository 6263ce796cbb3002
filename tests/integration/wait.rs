#![cfg(not(madsim))]
//! Waiting for a condition in the in-process tests on real tokio: a deadline only bounds a hung
//! run, nothing asserts on elapsed time.

use std::future::Future;
use std::time::Duration;

pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Polls `probe` every 20 ms until it answers `Some`, failing the test after [`WAIT_MAX`].
pub async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut probe: impl FnMut() -> F) -> T {
    let run = async {
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT_MAX, run).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}
