//! The endpoints of a served model: least-loaded routing under a per-endpoint concurrency
//! limit, and health.
//!
//! An endpoint that fails `eject_after` times in a row leaves the rotation for
//! `probe_after`; then one request at a time probes it, and the first success puts it back.
//! A request that finds every endpoint out of rotation waits for the earliest probe.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Endpoint {
    in_flight: usize,
    /// Consecutive failures.
    failures: u32,
    /// Out of rotation until then.
    down_until: Option<Instant>,
    /// A probe of this (ejected) endpoint is in flight.
    probing: bool,
    /// When a request last went to it (ties of load go to the least recently used).
    last_used: Option<Instant>,
}

/// How a request to an endpoint went, for its health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A failure of the endpoint (connection, timeout, 5xx, 429, a broken body).
    Failed,
    /// The request was refused for what it asked (4xx): the endpoint is healthy.
    Refused,
}

pub struct Pool {
    urls: Vec<String>,
    state: Mutex<Vec<Endpoint>>,
    freed: Condvar,
    max_concurrency: usize,
    eject_after: u32,
    probe_after: Duration,
}

/// Counts of health events, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub ejections: u64,
    pub readmissions: u64,
}

impl Pool {
    pub fn new(
        urls: Vec<String>,
        max_concurrency: usize,
        eject_after: u32,
        probe_after: Duration,
    ) -> Self {
        let state = urls
            .iter()
            .map(|_| Endpoint {
                in_flight: 0,
                failures: 0,
                down_until: None,
                probing: false,
                last_used: None,
            })
            .collect();
        Self {
            urls,
            state: Mutex::new(state),
            freed: Condvar::new(),
            max_concurrency,
            eject_after,
            probe_after,
        }
    }

    pub fn url(&self, i: usize) -> &str {
        &self.urls[i]
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Most requests in flight at once over every endpoint.
    pub fn capacity(&self) -> usize {
        self.urls.len() * self.max_concurrency
    }

    /// Waits for an endpoint to take one more request and returns its index: the least
    /// loaded one in rotation, or one whose rest is over (as its probe).
    pub fn acquire(&self) -> usize {
        let mut eps = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            let mut best: Option<usize> = None;
            let mut wake: Option<Instant> = None;
            for (i, e) in eps.iter().enumerate() {
                let available = match e.down_until {
                    None => e.in_flight < self.max_concurrency,
                    Some(t) if t <= now => !e.probing,
                    Some(t) => {
                        wake = Some(wake.map_or(t, |w| w.min(t)));
                        false
                    }
                };
                if !available {
                    continue;
                }
                best = match best {
                    Some(b)
                        if (eps[b].in_flight, eps[b].last_used) <= (e.in_flight, e.last_used) =>
                    {
                        Some(b)
                    }
                    _ => Some(i),
                };
            }
            if let Some(i) = best {
                let e = &mut eps[i];
                e.in_flight += 1;
                e.last_used = Some(now);
                if e.down_until.is_some() {
                    e.probing = true;
                }
                return i;
            }
            eps = match wake {
                Some(t) => {
                    self.freed
                        .wait_timeout(eps, t.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.freed.wait(eps).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Returns endpoint `i` after a request, with how it went; updates `health`.
    pub fn release(&self, i: usize, outcome: Outcome, health: &mut Health) {
        let mut eps = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let e = &mut eps[i];
        e.in_flight -= 1;
        match outcome {
            Outcome::Ok | Outcome::Refused => {
                if e.down_until.is_some() {
                    health.readmissions += 1;
                }
                e.failures = 0;
                e.down_until = None;
                e.probing = false;
            }
            Outcome::Failed => {
                e.failures += 1;
                if e.probing || e.failures >= self.eject_after {
                    if e.down_until.is_none() {
                        health.ejections += 1;
                    }
                    e.down_until = Some(Instant::now() + self.probe_after);
                    e.probing = false;
                }
            }
        }
        drop(eps);
        self.freed.notify_all();
    }

    /// Whether every endpoint is out of rotation now.
    pub fn all_down(&self) -> bool {
        let eps = self.state.lock().unwrap_or_else(|e| e.into_inner());
        eps.iter().all(|e| e.down_until.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_routing_respects_the_limit() {
        let pool = Pool::new(vec!["a".into(), "b".into()], 2, 3, Duration::from_secs(60));
        let first: Vec<usize> = (0..4).map(|_| pool.acquire()).collect();
        // Two each, alternating by load and then by least recent use.
        assert_eq!(first.iter().filter(|&&i| i == 0).count(), 2);
        assert_eq!(first.iter().filter(|&&i| i == 1).count(), 2);
        let mut h = Health::default();
        pool.release(1, Outcome::Ok, &mut h);
        assert_eq!(pool.acquire(), 1, "the only endpoint with room");
    }

    #[test]
    fn failing_endpoints_leave_and_a_successful_probe_readmits() {
        let pool = Pool::new(
            vec!["a".into(), "b".into()],
            4,
            2,
            Duration::from_millis(30),
        );
        let mut h = Health::default();
        for _ in 0..2 {
            pool.release(pool.acquire_specific(0), Outcome::Failed, &mut h);
        }
        assert_eq!(h.ejections, 1);
        // While "a" rests, everything goes to "b".
        for _ in 0..3 {
            assert_eq!(pool.acquire(), 1);
        }
        std::thread::sleep(Duration::from_millis(40));
        // Its rest is over: one probe goes to it (b is busier), and only one.
        assert_eq!(pool.acquire(), 0);
        assert_eq!(pool.acquire(), 1);
        pool.release(0, Outcome::Ok, &mut h);
        assert_eq!(h.readmissions, 1);
        assert!(!pool.all_down());
    }

    #[test]
    fn a_failed_probe_ejects_again_and_all_down_is_seen() {
        let pool = Pool::new(vec!["a".into()], 1, 1, Duration::from_millis(20));
        let mut h = Health::default();
        pool.release(pool.acquire(), Outcome::Failed, &mut h);
        assert!(pool.all_down());
        // acquire waits for the rest to end, then probes.
        let t = Instant::now();
        let i = pool.acquire();
        assert!(t.elapsed() >= Duration::from_millis(15));
        pool.release(i, Outcome::Failed, &mut h);
        // A failed probe keeps it out for another rest: still one ejection.
        assert_eq!(h.ejections, 1);
        assert!(pool.all_down());
        let t = Instant::now();
        let i = pool.acquire();
        assert!(t.elapsed() >= Duration::from_millis(15), "a new rest began");
        pool.release(i, Outcome::Ok, &mut h);
        assert_eq!(h.readmissions, 1);
    }

    impl Pool {
        /// Takes endpoint `i` regardless of routing (tests only).
        fn acquire_specific(&self, i: usize) -> usize {
            let mut eps = self.state.lock().unwrap();
            eps[i].in_flight += 1;
            i
        }
    }
}
