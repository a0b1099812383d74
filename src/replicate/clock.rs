//! The one clock of orchestration: the runner and the commands read the time through a
//! [`Clock`] they are given, so tests can fix it and nothing below reads it on its own.

use std::fmt::Debug;
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Debug + Send + Sync {
    fn now(&self) -> SystemTime;

    /// Seconds since the Unix epoch (0 before it).
    fn unix(&self) -> i64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    /// Milliseconds since the Unix epoch (0 before it).
    fn unix_ms(&self) -> u128 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug)]
    struct Fixed(SystemTime);

    impl Clock for Fixed {
        fn now(&self) -> SystemTime {
            self.0
        }
    }

    #[test]
    fn unix_forms() {
        let at = Fixed(UNIX_EPOCH + Duration::from_millis(1_705_314_030_250));
        assert_eq!(at.unix(), 1_705_314_030);
        assert_eq!(at.unix_ms(), 1_705_314_030_250);
        let before = Fixed(UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!((before.unix(), before.unix_ms()), (0, 0));
    }
}
