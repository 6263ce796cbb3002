//! openraft's `AsyncRuntime` on madsim (only under `cfg(madsim)`).
//!
//! openraft's default `TokioRuntime` would reach real tokio, which the simulator does not
//! control, and draws election timeouts from rand 0.8's `thread_rng()`, which is not
//! deterministic under madsim on Linux. This runtime takes tasks and time from madsim and
//! randomness from madsim's `GlobalRng`, so a simulated cluster is a function of its seed.
//!
//! Audit (openraft 0.9.25): the only randomness openraft draws is
//! `Config::new_rand_election_timeout`, through `AsyncRuntime::thread_rng()`; it does not call
//! `rand::thread_rng` directly. `Instant` stays `openraft::TokioInstant` (std's `Instant`
//! underneath), which madsim intercepts, so it reads simulated time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::async_runtime::AsyncOneshotSendExt;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};

/// Tasks, timers and randomness from madsim.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MadsimRuntime;

/// The error of a timed-out [`MadsimRuntime::timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// A future with a deadline: polls the inner future first, then the sleep. Hand-written because
/// madsim's `timeout` returns a type that cannot be named in an associated type.
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Pin<Box<madsim::time::Sleep>>,
}

impl<R, F: Future<Output = R>> Future for Timeout<F> {
    type Output = Result<R, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(value) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(value));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The `oneshot` sender openraft asks for: tokio's sync channel, which runs anywhere.
pub struct OneshotSender<T>(tokio::sync::oneshot::Sender<T>);

impl<T> fmt::Debug for OneshotSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneshotSender")
    }
}

impl<T: OptionalSend> AsyncOneshotSendExt<T> for OneshotSender<T> {
    fn send(self, value: T) -> Result<(), T> {
        self.0.send(value)
    }
}

impl AsyncRuntime for MadsimRuntime {
    type JoinError = madsim::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
    type Sleep = madsim::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = madsim::rand::GlobalRng;
    type OneshotSender<T: OptionalSend> = OneshotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        madsim::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        madsim::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        madsim::time::sleep_until(deadline.into_std())
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(madsim::time::sleep(duration)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(madsim::time::sleep_until(deadline.into_std())),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        madsim::rand::thread_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (OneshotSender(sender), receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Election timeouts drawn inside a fresh madsim runtime seeded with `seed`.
    fn election_timeouts(seed: u64) -> Vec<u64> {
        // A fresh thread per run: std caches hash keys per thread (see MADSIM-RECIPE.md).
        std::thread::spawn(move || {
            let runtime =
                madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            runtime.block_on(async {
                let config = openraft::Config::default();
                (0..8)
                    .map(|_| config.new_rand_election_timeout::<MadsimRuntime>())
                    .collect()
            })
        })
        .join()
        .expect("the run finishes")
    }

    // Goal: openraft's election timeouts come from madsim's seeded RNG (not rand 0.8's
    // thread_rng), so a simulated election is a function of the seed. Method: draw timeouts
    // the way openraft does, twice per seed, and across seeds.
    #[test]
    fn election_timeouts_follow_the_seed() {
        let first = election_timeouts(7);
        assert_eq!(first, election_timeouts(7), "same seed, same timeouts");
        assert_ne!(first, election_timeouts(8), "another seed, other timeouts");
        let config = openraft::Config::default();
        assert!(first
            .iter()
            .all(|t| (config.election_timeout_min..config.election_timeout_max).contains(t)));
    }

    // Goal: the hand-written timeout future answers the inner value when it is ready first and
    // Elapsed when the deadline passes first, in simulated time.
    #[test]
    fn timeout_future() {
        let runtime = madsim::runtime::Runtime::new();
        runtime.block_on(async {
            let quick = MadsimRuntime::timeout(Duration::from_secs(1), async { 5 }).await;
            assert_eq!(quick, Ok(5));
            let slow = MadsimRuntime::timeout(
                Duration::from_millis(10),
                MadsimRuntime::sleep(Duration::from_secs(5)),
            )
            .await;
            assert_eq!(slow, Err(Elapsed));
            let deadline = TokioInstant::now() + Duration::from_millis(20);
            let at =
                MadsimRuntime::timeout_at(deadline, MadsimRuntime::sleep(Duration::from_secs(5)))
                    .await;
            assert_eq!(at, Err(Elapsed));
            assert!(
                TokioInstant::now() >= deadline,
                "the deadline passed in simulated time"
            );
        });
    }
}
