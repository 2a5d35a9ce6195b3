//! The time policy and grant decisions are made at.
//!
//! Windows (a policy's validity, a grant's `not_before`/`not_after`) are
//! checked against a [`Clock`]. A node uses the system clock; tests inject
//! one to check expiry without waiting. Ledger entry times and receipts
//! always use the system clock: an injected clock never reaches the log.

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;

/// A source of the current time.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<dyn Fn() -> OffsetDateTime + Send + Sync>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that asks `now` (for tests: a shifted or frozen time).
    pub fn from_fn(now: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(now)))
    }

    /// The current time.
    pub fn now(&self) -> OffsetDateTime {
        self.0
            .as_ref()
            .map_or_else(OffsetDateTime::now_utc, |f| f())
    }

    /// The current time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        let now = self.now();
        now.unix_timestamp() * 1000 + i64::from(now.millisecond())
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock(injected)"
        } else {
            "Clock(system)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_clock_is_asked() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let clock = Clock::from_fn(move || at);
        assert_eq!(clock.now(), at);
        assert_eq!(clock.now_ms(), 1_700_000_000_000);
        let system = Clock::system().now();
        assert!((OffsetDateTime::now_utc() - system).whole_seconds().abs() < 5);
    }
}
