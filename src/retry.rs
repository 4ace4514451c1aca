//! Retrying a step until it succeeds, fails for good, or the overall deadline passes.
//!
//! Delays follow "full jitter" (a random wait between zero and an exponentially growing
//! ceiling), so nodes that boot together do not knock on the leader in lockstep. A server's
//! `Retry-After` is a floor for the next wait; the deadline is a hard ceiling.

use std::cell::Cell;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, Retryable};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::exit::{ExitStatus, HasExitStatus};
use crate::systemd;

/// Whether an error is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Configuration, verification, a refusal that will not change: fail at once.
    Permanent,
    /// Refused, timed out, 5xx, busy: try again, no sooner than `retry_after` when the server
    /// said so.
    Transient { retry_after: Option<Duration> },
}

/// Errors that know whether trying again can help: the retry loop asks each one.
pub trait HasRetryClass: Display {
    fn class(&self) -> Class;
}

/// The moment a whole command must be done by (`timeouts.total`).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    pub fn after(total: Duration) -> Self {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

/// The deadline passed while a step was still failing for a transient reason.
#[derive(Debug, thiserror::Error)]
#[error(
    "gave up waiting for {what}: the deadline (timeouts.total = {total:?}) passed; last error: {last}"
)]
pub struct DeadlinePassed {
    what: String,
    total: Duration,
    last: String,
}

impl HasExitStatus for DeadlinePassed {
    fn exit_status(&self) -> ExitStatus {
        ExitStatus::Unavailable
    }
}

/// How fast a step polls: waits under a ceiling of `first` for the first `keep_first_for`, then
/// a ceiling that doubles on every try up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub first: Duration,
    pub keep_first_for: Duration,
    pub max: Duration,
}

impl Pace {
    /// A remote cluster that may be busy: start gently.
    pub const REMOTE: Pace = Pace {
        first: Duration::from_millis(200),
        keep_first_for: Duration::ZERO,
        max: Duration::from_secs(5),
    };
    /// Something expected within a fraction of a second (a local member starting, a learner
    /// catching up): look often for a couple of seconds, since every poll interval is added to
    /// the join's latency, then back off.
    pub const EAGER: Pace = Pace {
        first: Duration::from_millis(20),
        keep_first_for: Duration::from_secs(2),
        max: Duration::from_secs(1),
    };
}

impl BackoffBuilder for Pace {
    type Backoff = FullJitter;

    fn build(self) -> FullJitter {
        FullJitter {
            pace: self,
            ceiling: self.first,
            waited: Duration::ZERO,
        }
    }
}

/// Endless: the deadline, not a count, ends the retries.
#[derive(Debug)]
pub struct FullJitter {
    pace: Pace,
    ceiling: Duration,
    waited: Duration,
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let ceiling = self.ceiling;
        if self.waited >= self.pace.keep_first_for {
            self.ceiling = (self.ceiling * 2).min(self.pace.max);
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let wait = Duration::from_nanos(fastrand::u64(0..=nanos));
        self.waited += wait;
        Some(wait)
    }
}

/// How long this process has waited for others: before the attempt that succeeded, in every
/// `until`, and between `flint health --wait`'s checks. The closing line of a first-boot step
/// tells it apart from the step's own work.
static WAITED_NANOS: AtomicU64 = AtomicU64::new(0);

pub fn note_waited(d: Duration) {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    WAITED_NANOS.fetch_add(nanos, Ordering::Relaxed);
}

pub fn waited() -> Duration {
    Duration::from_nanos(WAITED_NANOS.load(Ordering::Relaxed))
}

/// Runs `attempt` until it succeeds, fails permanently, or `deadline` passes. `what` names what
/// is awaited, for the log, for `systemctl status`, and for the error at the deadline.
pub async fn until<T, E, F, Fut>(
    what: &str,
    deadline: &Deadline,
    pace: Pace,
    mut attempt: F,
) -> crate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: HasRetryClass + Into<crate::Error>,
{
    let mut log = WaitLog::new(what);
    let started = Instant::now();
    let attempt_started = Cell::new(started);
    let timed_attempt = || {
        attempt_started.set(Instant::now());
        attempt()
    };
    let retrying = timed_attempt
        .retry(pace)
        .sleep(tokio::time::sleep)
        .when(|e: &E| e.class() != Class::Permanent)
        .adjust(|e: &E, next: Option<Duration>| {
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return None;
            }
            let floor = match e.class() {
                Class::Transient { retry_after } => retry_after.unwrap_or_default(),
                Class::Permanent => Duration::ZERO,
            };
            next.map(|wait| wait.max(floor).min(remaining))
        })
        .notify(|e: &E, wait: Duration| {
            log.retrying(&e.to_string(), deadline.remaining(), wait);
        });
    let outcome = tokio::time::timeout_at(deadline.at, retrying).await;
    note_waited(attempt_started.get().saturating_duration_since(started));
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.class() == Class::Permanent => Err(e.into()),
        Ok(Err(e)) => Err(DeadlinePassed {
            what: what.to_owned(),
            total: deadline.total,
            last: e.to_string(),
        }
        .into()),
        Err(_) => Err(DeadlinePassed {
            what: what.to_owned(),
            total: deadline.total,
            last: log
                .last_reason
                .unwrap_or_else(|| "the last attempt was still running".to_owned()),
        }
        .into()),
    }
}

/// What a wait tells the journal and `systemctl status`: a line when the reason changes, not one
/// per try (a wait of minutes would bury the rest of the log).
pub struct WaitLog<'a> {
    what: &'a str,
    last_reason: Option<String>,
}

impl<'a> WaitLog<'a> {
    /// `what` is what is awaited: `the cluster to be healthy`.
    pub fn new(what: &'a str) -> Self {
        WaitLog {
            what,
            last_reason: None,
        }
    }

    /// One more try is due in `wait`, because of `reason`, with `remaining` before the deadline.
    pub fn retrying(&mut self, reason: &str, remaining: Duration, wait: Duration) {
        let what = self.what;
        if self.last_reason.as_deref() == Some(reason) {
            debug!("still waiting for {what}; next try in {wait:?}");
        } else {
            info!(
                "waiting for {what}: {reason}; trying again for up to {} more",
                human(remaining)
            );
            self.last_reason = Some(reason.to_owned());
        }
        systemd::waiting(&format!("waiting for {what}"), remaining);
    }
}

/// `9m58s`, `42s`, `0.8s`: what an operator reads at a glance.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{:.1}s", d.as_secs_f64()),
        1..60 => format!("{secs}s"),
        _ => format!("{}m{:02}s", secs / 60, secs % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A refusal of the class a test needs.
    fn refusal(class: Class) -> crate::engines::Error {
        crate::engines::Error::Refused {
            url: "https://10.0.0.1:2379/admin/member/add".into(),
            code: 0,
            message: format!("{class:?}"),
            class,
        }
    }

    #[test]
    fn full_jitter_stays_under_a_doubling_ceiling() {
        let mut backoff = Pace {
            first: Duration::from_millis(10),
            keep_first_for: Duration::ZERO,
            max: Duration::from_millis(80),
        }
        .build();
        for ceiling in [10, 20, 40, 80, 80, 80] {
            let wait = backoff.next().unwrap();
            assert!(
                wait <= Duration::from_millis(ceiling),
                "{wait:?} > {ceiling}ms"
            );
        }
    }

    #[test]
    fn an_eager_pace_keeps_its_first_ceiling_for_a_while() {
        let mut backoff = Pace::EAGER.build();
        let mut waited = Duration::ZERO;
        while waited < Pace::EAGER.keep_first_for {
            let wait = backoff.next().unwrap();
            assert!(wait <= Pace::EAGER.first, "{wait:?} while polling eagerly");
            waited += wait;
        }
        let later = (0..20).map(|_| backoff.next().unwrap()).max().unwrap();
        assert!(later <= Pace::EAGER.max);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let calls = Cell::new(0);
        let deadline = Deadline::after(Duration::from_secs(60));
        let value = until("the thing", &deadline, Pace::EAGER, || async {
            calls.set(calls.get() + 1);
            if calls.get() < 4 {
                Err(refusal(Class::Transient { retry_after: None }))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!((value, calls.get()), (7, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_fail_at_once() {
        let calls = Cell::new(0);
        let deadline = Deadline::after(Duration::from_secs(60));
        let err = until("the thing", &deadline, Pace::EAGER, || async {
            calls.set(calls.get() + 1);
            Err::<(), _>(refusal(Class::Permanent))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.get(), 1);
        assert!(matches!(err, crate::Error::Engine(_)), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_transient_retries_and_says_why() {
        let start = Instant::now();
        let deadline = Deadline::after(Duration::from_secs(30));
        let err = until("the leader", &deadline, Pace::REMOTE, || async {
            Err::<(), _>(refusal(Class::Transient { retry_after: None }))
        })
        .await
        .unwrap_err();
        let crate::Error::Deadline(passed) = err else {
            panic!("not the deadline: {err:?}");
        };
        assert!(passed.to_string().contains("the leader"));
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert!(start.elapsed() < Duration::from_secs(31));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_a_floor_for_the_next_wait() {
        let start = Instant::now();
        let calls = Cell::new(0);
        let deadline = Deadline::after(Duration::from_secs(60));
        until("the slot", &deadline, Pace::EAGER, || async {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                Err(refusal(Class::Transient {
                    retry_after: Some(Duration::from_secs(7)),
                }))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert!(start.elapsed() >= Duration::from_secs(7));
    }
}
