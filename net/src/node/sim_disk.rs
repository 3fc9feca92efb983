//! Simulated disk timing, shared by a node's storage task and snapshot
//! tasks (simulation only: a real disk brings its own, and by default every
//! wait here is zero).
//!
//! The disk serves one request at a time, first come first served: a WAL
//! fsync takes a random latency plus its bytes at the disk's bandwidth; a
//! snapshot moves through it in `IO_UNIT` pieces, each of which waits for
//! the requests queued before it. So a snapshot written, sent or received
//! on a slow disk takes many ticks, and the WAL's fsyncs interleave with
//! its pieces instead of waiting for all of it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

/// Bytes of snapshot I/O per disk request.
pub const IO_UNIT: u64 = 64 << 10;

/// A node's simulated disk (cheap to clone; clones share the queue).
#[derive(Clone)]
pub struct SimDisk {
    fsync_max: Duration,
    bytes_per_sec: u64,
    queue: Arc<Mutex<Queue>>,
}

struct Queue {
    /// When the requests already queued are done.
    busy_until: Option<Instant>,
    rng: ChaCha8Rng,
}

impl SimDisk {
    /// A disk whose fsyncs take up to `fsync_max` and which moves
    /// `bytes_per_sec` (0: at no cost), its latencies drawn from `seed`.
    pub fn new(fsync_max: Duration, bytes_per_sec: u64, seed: u64) -> Self {
        SimDisk {
            fsync_max,
            bytes_per_sec,
            queue: Arc::new(Mutex::new(Queue {
                busy_until: None,
                rng: ChaCha8Rng::seed_from_u64(seed),
            })),
        }
    }

    /// Whether fsyncs cost no simulated time (every real run).
    pub fn fsync_is_instant(&self) -> bool {
        self.fsync_max.is_zero() && self.bytes_per_sec == 0
    }

    /// Waits while the disk makes `bytes` of writes durable.
    pub async fn fsync(&self, bytes: u64) {
        if self.fsync_is_instant() {
            return;
        }
        let until = {
            let mut q = self.lock();
            let micros = q.rng.random_range(0..=self.fsync_max.as_micros() as u64);
            let cost = Duration::from_micros(micros) + self.transfer_time(bytes);
            q.reserve(Instant::now(), cost)
        };
        tokio::time::sleep_until(until).await;
    }

    /// Waits while the disk reads or writes `bytes` of a snapshot, in
    /// `IO_UNIT` pieces that queue behind other requests one by one.
    pub async fn transfer(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let mut left = bytes;
        while left > 0 {
            let piece = left.min(IO_UNIT);
            left -= piece;
            let until = self
                .lock()
                .reserve(Instant::now(), self.transfer_time(piece));
            tokio::time::sleep_until(until).await;
        }
    }

    fn transfer_time(&self, bytes: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(bytes.saturating_mul(1_000_000) / self.bytes_per_sec)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing panics while holding it; a poisoned queue is still a queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Queue {
    /// Queues a request taking `cost` at `now`; returns when it is done.
    fn reserve(&mut self, now: Instant, cost: Duration) -> Instant {
        let start = self.busy_until.filter(|&b| b > now).unwrap_or(now);
        let done = start + cost;
        self.busy_until = Some(done);
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_request_waits_for_the_ones_queued_before_it() {
        let disk = SimDisk::new(Duration::ZERO, 1 << 20, 1);
        let mut q = disk.lock();
        let t0 = Instant::now();
        // A snapshot's first two pieces, then an fsync: it waits for those
        // two only, not for the rest of the snapshot.
        let piece = disk.transfer_time(IO_UNIT);
        assert_eq!(piece, Duration::from_micros(62_500));
        assert_eq!(q.reserve(t0, piece), t0 + piece);
        assert_eq!(q.reserve(t0, piece), t0 + piece * 2);
        assert_eq!(q.reserve(t0 + ms(1), ms(3)), t0 + piece * 2 + ms(3));
        // Once the disk is idle, a request starts when it is made.
        let later = t0 + ms(500);
        assert_eq!(q.reserve(later, ms(2)), later + ms(2));
    }

    #[test]
    fn a_disk_without_limits_costs_nothing() {
        let disk = SimDisk::new(Duration::ZERO, 0, 1);
        assert!(disk.fsync_is_instant());
        assert_eq!(disk.transfer_time(1 << 30), Duration::ZERO);
        assert!(!SimDisk::new(ms(1), 0, 1).fsync_is_instant());
        assert!(!SimDisk::new(Duration::ZERO, 1, 1).fsync_is_instant());
    }
}
