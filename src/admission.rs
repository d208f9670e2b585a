//! Admission control: whether a new connection may open now, and the limits
//! shared by all workers (per IP, per user). Per-connection limits live with
//! the connection (`conn`).
//!
//! Everything here is touched once per connection attempt or once per chat
//! message, never per delivered frame.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Limits;

/// Why a connection attempt was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a valid WebSocket upgrade.
    BadUpgrade,
    /// The `Origin` is not on the allow-list.
    Origin,
    /// Missing or invalid token.
    Auth,
    /// Too many new connections from one IP address.
    IpRate,
    /// The user has `--max-conns-per-user` connections already.
    UserConns,
    /// The process has `--max-connections` connections already.
    Capacity,
    /// Resident memory is above `--memory-limit-mb`.
    Memory,
    /// The server is shutting down.
    Stopping,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::BadUpgrade,
        Refusal::Origin,
        Refusal::Auth,
        Refusal::IpRate,
        Refusal::UserConns,
        Refusal::Capacity,
        Refusal::Memory,
        Refusal::Stopping,
    ];

    pub fn status(self) -> u16 {
        match self {
            Refusal::BadUpgrade => 400,
            Refusal::Auth => 401,
            Refusal::Origin => 403,
            Refusal::IpRate | Refusal::UserConns => 429,
            Refusal::Capacity | Refusal::Memory | Refusal::Stopping => 503,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadUpgrade => "bad_upgrade",
            Refusal::Origin => "origin",
            Refusal::Auth => "auth",
            Refusal::IpRate => "ip_rate",
            Refusal::UserConns => "user_connections",
            Refusal::Capacity => "capacity",
            Refusal::Memory => "memory",
            Refusal::Stopping => "stopping",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::BadUpgrade => "bad websocket upgrade",
            Refusal::Origin => "origin not allowed",
            Refusal::Auth => "invalid token",
            Refusal::IpRate => "too many connections from this address",
            Refusal::UserConns => "too many connections for this user",
            Refusal::Capacity => "server at capacity",
            Refusal::Memory => "server under memory pressure",
            Refusal::Stopping => "server shutting down",
        }
    }
}

/// Shared admission state. One per process.
pub struct Admission {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<Arc<str>>,
    user_conns: Mutex<HashMap<Arc<str>, usize>>,
    max_conns_per_user: usize,
    max_connections: usize,
    over_memory: AtomicBool,
    /// Refusals by reason, in the order of [`Refusal::ALL`].
    refused: [AtomicU64; 8],
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate))
}

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        let ip_rate = limits.connections_per_ip_per_sec;
        let user_rate = limits.user_messages_per_sec;
        Admission {
            per_ip: RateLimiter::dashmap_with_clock(
                quota(ip_rate, ip_rate.saturating_mul(5)),
                clock(),
            ),
            per_user: RateLimiter::dashmap_with_clock(
                quota(user_rate, user_rate.saturating_mul(3)),
                clock(),
            ),
            user_conns: Mutex::new(HashMap::new()),
            max_conns_per_user: limits.max_conns_per_user,
            max_connections: limits.max_connections,
            over_memory: AtomicBool::new(false),
            refused: Default::default(),
        }
    }

    /// A new TCP connection from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        // Keyed limiter state per address; see `sweep` for its upkeep.
        self.per_ip.check_key(&ip).map_err(|_| Refusal::IpRate)
    }

    /// Take a connection slot for `user`; [`Admission::release`] gives it back.
    pub fn admit(&self, user: &Arc<str>, open: usize) -> Result<(), Refusal> {
        if self.over_memory.load(Ordering::Relaxed) {
            return Err(Refusal::Memory);
        }
        if open >= self.max_connections {
            return Err(Refusal::Capacity);
        }
        let mut conns = self.user_conns.lock().expect("user_conns poisoned");
        let n = conns.entry(user.clone()).or_insert(0);
        if *n >= self.max_conns_per_user {
            return Err(Refusal::UserConns);
        }
        *n += 1;
        Ok(())
    }

    pub fn release(&self, user: &Arc<str>) {
        let mut conns = self.user_conns.lock().expect("user_conns poisoned");
        if let Some(n) = conns.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                conns.remove(user);
            }
        }
    }

    /// One chat message from `user`, on any connection: Err(wait) when over
    /// the per-user rate.
    pub fn user_message(&self, user: &Arc<str>) -> Result<(), Duration> {
        self.per_user
            .check_key(user)
            .map_err(|not_until| not_until.wait_time_from(self.per_user.clock().now()))
    }

    pub fn count(&self, why: Refusal) {
        crate::metrics::get()
            .refused
            .with_label_values(&[why.label()])
            .inc();
        let i = Refusal::ALL.iter().position(|r| *r == why).expect("listed");
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        let i = Refusal::ALL.iter().position(|r| *r == why).expect("listed");
        self.refused[i].load(Ordering::Relaxed)
    }

    /// Forget limiter state of idle keys, so the maps do not grow forever.
    pub fn sweep(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_user.retain_recent();
        self.per_user.shrink_to_fit();
    }

    /// Watch resident memory once a second on a small thread and refuse new
    /// connections while it is above `limit_mb`.
    pub fn watch_memory(self: &Arc<Self>, limit_mb: u64) {
        if limit_mb == 0 {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("hubbub-memwatch".into())
            .spawn(move || loop {
                let over = resident_mb().is_some_and(|mb| mb > limit_mb);
                if over != me.over_memory.swap(over, Ordering::Relaxed) {
                    if over {
                        tracing::warn!(limit_mb, "memory limit reached; refusing new connections");
                    } else {
                        tracing::info!(
                            limit_mb,
                            "memory back under the limit; accepting connections"
                        );
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            });
        if let Err(e) = spawned {
            tracing::warn!(err = %e, "cannot start the memory watcher; --memory-limit-mb ignored");
        }
    }
}

/// One clock for every rate limiter: creating one calibrates the TSC, which
/// costs tens of microseconds, too much to pay per connection.
pub fn clock() -> DefaultClock {
    static CLOCK: std::sync::OnceLock<DefaultClock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(DefaultClock::default).clone()
}

/// Resident set size of this process in MiB, from /proc.
fn resident_mb() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        let mut cfg = crate::config::Options::default().resolve().unwrap();
        cfg.limits.max_conns_per_user = 2;
        cfg.limits.max_connections = 3;
        cfg.limits.connections_per_ip_per_sec = 1;
        cfg.limits
    }

    #[test]
    fn user_and_process_caps() {
        let a = Admission::new(&limits());
        let ana: Arc<str> = "ana".into();
        assert_eq!(a.admit(&ana, 0), Ok(()));
        assert_eq!(a.admit(&ana, 1), Ok(()));
        assert_eq!(a.admit(&ana, 2), Err(Refusal::UserConns));
        a.release(&ana);
        assert_eq!(a.admit(&ana, 2), Ok(()));
        assert_eq!(a.admit(&"bo".into(), 3), Err(Refusal::Capacity));
    }

    #[test]
    fn ip_rate_allows_a_burst_then_refuses() {
        let a = Admission::new(&limits());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(a.check_ip(ip), Ok(()));
        }
        assert_eq!(a.check_ip(ip), Err(Refusal::IpRate));
        assert_eq!(
            a.check_ip("10.0.0.2".parse().unwrap()),
            Ok(()),
            "per address"
        );
    }
}
