//! A bandwidth limit (`max_rate`, like Xen Orchestra's `maxExportRate`) as a wrapper around
//! a chunk stream rather than a branch inside the transfer. One [`Throttle`] may be shared
//! by every transfer of a job, which then together stay under the rate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::ChunkStream;

/// How much may pass at once after an idle spell: a quarter of a second's worth.
const BURST: Duration = Duration::from_millis(250);

/// A token bucket, sans-IO: time is a parameter. Bytes taken beyond the tokens at hand
/// become a debt, and the taker waits until the rate has paid it off; so chunks of any size
/// pass whole, and concurrent takers share the rate.
#[derive(Debug, Clone)]
struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    /// The most tokens that accumulate.
    burst: f64,
    /// Negative while in debt.
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1) as f64;
        let burst = rate * BURST.as_secs_f64();
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    /// Take `bytes` at `now`: how long to wait before they may go.
    fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A rate limit in bytes per second, shared by its clones.
#[derive(Debug, Clone)]
pub struct Throttle {
    bucket: Arc<Mutex<TokenBucket>>,
}

impl Throttle {
    /// At most `bytes_per_second` (at least 1) through all the clones together.
    pub fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            bucket: Arc::new(Mutex::new(TokenBucket::new(
                bytes_per_second,
                Instant::now(),
            ))),
        }
    }

    /// The limit in bytes per second.
    pub fn rate(&self) -> u64 {
        self.bucket.lock().map_or(0, |b| b.rate as u64)
    }

    /// Wait until `bytes` more may pass.
    pub async fn pass(&self, bytes: u64) {
        let wait = match self.bucket.lock() {
            Ok(mut bucket) => bucket.take(bytes, Instant::now()),
            // A panic elsewhere while holding the lock: let the bytes through unthrottled
            // rather than stop the transfer.
            Err(_) => Duration::ZERO,
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl PartialEq for Throttle {
    fn eq(&self, other: &Throttle) -> bool {
        Arc::ptr_eq(&self.bucket, &other.bucket)
    }
}

/// `inner`, each chunk let through once `throttle` allows it; unlimited without a throttle.
pub struct Throttled<S> {
    inner: S,
    throttle: Option<Throttle>,
}

impl<S> Throttled<S> {
    pub fn new(inner: S, throttle: Option<Throttle>) -> Throttled<S> {
        Throttled { inner, throttle }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: ChunkStream> ChunkStream for Throttled<S> {
    type Error = S::Error;

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, S::Error> {
        let chunk = self.inner.next_chunk().await?;
        if let (Some(throttle), Some(chunk)) = (&self.throttle, &chunk) {
            throttle.pass(chunk.len() as u64).await;
        }
        Ok(chunk)
    }

    fn blocks(&self) -> (u32, Option<u32>) {
        self.inner.blocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_turns_debt_into_waiting() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, start);
        // The burst (250 bytes) passes at once.
        assert_eq!(bucket.take(250, start), Duration::ZERO);
        // Then a chunk waits for what it lacks.
        assert_eq!(bucket.take(500, start), Duration::from_millis(500));
        // A second taker queues behind the first's debt.
        assert_eq!(bucket.take(100, start), Duration::from_millis(600));
        // Time pays the debt off.
        let later = start + Duration::from_millis(600);
        assert_eq!(bucket.take(0, later), Duration::ZERO);
        // Idle time earns no more than the burst.
        let idle = later + Duration::from_secs(60);
        assert_eq!(bucket.take(250, idle), Duration::ZERO);
        assert_eq!(bucket.take(1, idle), Duration::from_millis(1));
    }

    /// Chunks of `size` bytes, `count` of them.
    struct Chunks {
        size: usize,
        count: usize,
    }

    impl ChunkStream for Chunks {
        type Error = std::convert::Infallible;

        async fn next_chunk(&mut self) -> Result<Option<Bytes>, Self::Error> {
            if self.count == 0 {
                return Ok(None);
            }
            self.count -= 1;
            Ok(Some(Bytes::from(vec![0u8; self.size])))
        }

        fn blocks(&self) -> (u32, Option<u32>) {
            (0, None)
        }
    }

    async fn drain(stream: &mut impl ChunkStream) -> u64 {
        let mut total = 0;
        while let Ok(Some(chunk)) = stream.next_chunk().await {
            total += chunk.len() as u64;
        }
        total
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_stream_keeps_to_its_rate() {
        let throttle = Throttle::new(1 << 20);
        let start = Instant::now();
        let mut stream = Throttled::new(
            Chunks {
                size: 256 << 10,
                count: 16,
            },
            Some(throttle),
        );
        assert_eq!(drain(&mut stream).await, 4 << 20);
        // 4 MiB at 1 MiB/s, less the quarter-second burst.
        assert_eq!(start.elapsed(), Duration::from_millis(3750));
    }

    #[tokio::test(start_paused = true)]
    async fn clones_of_a_throttle_share_its_rate() {
        let throttle = Throttle::new(1 << 20);
        let start = Instant::now();
        let streams = [throttle.clone(), throttle].map(|t| {
            Throttled::new(
                Chunks {
                    size: 256 << 10,
                    count: 8,
                },
                Some(t),
            )
        });
        let [mut a, mut b] = streams;
        let (x, y) = tokio::join!(drain(&mut a), drain(&mut b));
        assert_eq!(x + y, 4 << 20);
        assert!(
            start.elapsed() >= Duration::from_millis(3750),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_throttle_nothing_waits() {
        let start = Instant::now();
        let mut stream = Throttled::new(
            Chunks {
                size: 1 << 20,
                count: 64,
            },
            None,
        );
        assert_eq!(drain(&mut stream).await, 64 << 20);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
