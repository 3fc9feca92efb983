//! Rate limits for warnings that someone outside the node can trigger at
//! will (a foreign peer, a hostile client): each kind is logged at most once
//! per period, and the next message says how many were held back.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Lets each kind of warning through at most once per period.
#[derive(Debug)]
pub struct LogLimiter {
    period: Duration,
    /// Kind -> when it was last let through, and how many were held since.
    seen: Mutex<BTreeMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    /// A limiter letting each kind through once per `period`.
    pub fn new(period: Duration) -> Self {
        LogLimiter {
            period,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether a warning of `kind` may be logged now; if so, how many of
    /// that kind were held back since the last one. Kinds are static
    /// strings, so the table stays as small as the code's list of them.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < self.period => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let suppressed = *held;
                *last = now;
                *held = 0;
                Some(suppressed)
            }
            None => {
                seen.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_kind_passes_once_per_period_and_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_millis(50));
        assert_eq!(limiter.allow("a"), Some(0));
        assert_eq!(limiter.allow("b"), Some(0), "kinds are limited apart");
        for _ in 0..5 {
            assert_eq!(limiter.allow("a"), None);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            limiter.allow("a"),
            Some(5),
            "the next one says how many were held back"
        );
    }
}
