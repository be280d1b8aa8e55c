//! Time, read in one place: unix seconds for token claims and stored state ([`unix_now`]), and
//! [`Clock`], the monotonic clock of the limiters and the lockout that tests move forward.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::nanos::Nanos;

/// Seconds since the Unix epoch by the system clock (0 before the epoch, saturating after
/// `i64::MAX`): token `iat`/`exp`, key ages, stored expiry times.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A monotonic clock that can be moved forward by hand, and the unix seconds read on it. Every
/// clone shares one offset; in production the offset stays zero and this is the system's
/// monotonic time.
#[derive(Clone, Debug)]
pub struct Clock {
    origin: Instant,
    offset: Arc<AtomicU64>,
    unix_origin: i64,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            offset: Arc::new(AtomicU64::new(0)),
            unix_origin: unix_now(),
        }
    }
}

impl Clock {
    /// Moves this clock (and every clone of it) forward: the manual clock of tests.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset.fetch_add(nanos, Ordering::SeqCst);
    }

    /// Time since this clock was made, advances included.
    pub fn elapsed(&self) -> Duration {
        self.origin.elapsed() + Duration::from_nanos(self.offset.load(Ordering::SeqCst))
    }

    /// Unix seconds on this clock (for lockout state kept in the store).
    pub fn unix_now(&self) -> i64 {
        self.unix_origin + self.elapsed().as_secs() as i64
    }
}

impl governor::clock::Clock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_one_clone_moves_every_clone_and_its_unix_time() {
        let clock = Clock::default();
        let clone = clock.clone();
        let before = clone.unix_now();
        clock.advance(Duration::from_secs(3600));
        assert!(clone.elapsed() >= Duration::from_secs(3600));
        assert!(clone.unix_now() >= before + 3600);
        assert!((clone.unix_now() - unix_now() - 3600).abs() <= 1);
    }
}
