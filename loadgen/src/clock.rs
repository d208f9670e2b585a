//! The one clock senders and receivers share: microseconds since the Unix epoch, read from
//! the monotonic clock.
//!
//! A sender writes `now_us()` into the message; a receiver in the same process subtracts it
//! from its own `now_us()`. Reading `Instant` keeps those differences immune to wall-clock
//! steps during a run, and anchoring it to the epoch once at start makes the values unique
//! across runs, which message ids rely on (see `client`).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();

fn anchor() -> &'static (Instant, u64) {
    ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (Instant::now(), wall.as_micros() as u64)
    })
}

/// Microseconds since the Unix epoch, monotonic within this process.
pub fn now_us() -> u64 {
    let (start, epoch_us) = anchor();
    epoch_us + start.elapsed().as_micros() as u64
}

/// Seconds since the Unix epoch, for token expiry.
pub fn now_secs() -> u64 {
    now_us() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back() {
        let a = now_us();
        let b = now_us();
        assert!(b >= a);
        assert!(a > 1_600_000_000_000_000, "anchored to the epoch");
    }
}
