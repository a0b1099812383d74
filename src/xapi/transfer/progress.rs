//! Transfer progress: bytes and blocks moved, rate and ETA.

use std::time::Duration;

/// A snapshot of a running transfer, handed to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Stream bytes forwarded to the target so far.
    pub bytes: u64,
    /// The stream's exact length, known once the BAT has been read.
    pub total: Option<u64>,
    pub blocks: u32,
    pub blocks_total: Option<u32>,
    pub elapsed: Duration,
}

impl Progress {
    /// Bytes per second since the start.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs
        } else {
            0.0
        }
    }

    /// The time left at the average rate so far.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        let rate = self.rate();
        (rate > 0.0)
            .then(|| Duration::from_secs_f64(total.saturating_sub(self.bytes) as f64 / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta() {
        let p = Progress {
            bytes: 100,
            total: Some(300),
            blocks: 1,
            blocks_total: Some(3),
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(p.rate(), 50.0);
        assert_eq!(p.eta(), Some(Duration::from_secs(4)));
        let unknown = Progress { total: None, ..p };
        assert_eq!(unknown.eta(), None);
        let start = Progress {
            elapsed: Duration::ZERO,
            ..p
        };
        assert_eq!(start.rate(), 0.0);
        assert_eq!(start.eta(), None);
    }
}
