//! The one backoff of every wait on the brokers: startup, and a stalled
//! loop's recovery attempts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::Error;

/// Delays that double from `first` up to `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { delay: first, max }
    }

    /// The wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        d
    }

    /// Sleeps the next delay, in short steps so that `stop` cuts it short;
    /// false if `stop` is set.
    pub(crate) fn sleep(&mut self, stop: &AtomicBool) -> bool {
        let until = Instant::now() + self.next_delay();
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        !stop.load(Ordering::Relaxed)
    }
}

/// Runs `attempt` until it succeeds, retrying with backoff while the error
/// is transient (`/readyz` says not ready meanwhile, `/healthz` stays up);
/// any other error, such as a missing topic, is returned at once.
pub(crate) fn retry_while_transient<T>(
    stop: &AtomicBool,
    mut attempt: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match attempt() {
            Err(e) if e.is_transient() => {
                warn!(error = %e, "Kafka is unreachable; retrying (not ready meanwhile)");
                if !backoff.sleep(stop) {
                    return Err(Error::Stopped("waiting for Kafka"));
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }

    #[test]
    fn a_transient_error_is_retried_and_a_lasting_one_returned() {
        let stop = AtomicBool::new(false);
        let mut calls = 0;
        let got = retry_while_transient(&stop, || {
            calls += 1;
            if calls < 2 {
                Err(Error::Timeout("not yet".into()))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(got.unwrap_or_default(), 2);
        let got: Result<(), Error> = retry_while_transient(&stop, || Err(Error::MissingTopic("t".into())));
        assert!(matches!(got, Err(Error::MissingTopic(_))));
        stop.store(true, Ordering::Relaxed);
        let got: Result<(), Error> = retry_while_transient(&stop, || Err(Error::Timeout("down".into())));
        assert!(matches!(got, Err(Error::Stopped(_))));
    }
}
