//! Per-user rate and concurrency limits, shared by every worker thread without a lock.
//!
//! Rate: GCRA (the generic cell rate algorithm), i.e. a token bucket of `requests_per_minute`
//! tokens refilled evenly over the minute, kept as one atomic "theoretical arrival time". A burst
//! of the whole minute's allowance is accepted, and the long-run rate never exceeds it.
//! Concurrency: an atomic count of calls in flight, released when the call's permit drops.
//! A user's state lives as long as the user has a key, and survives key table reloads.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The limits that apply to one call: the server's defaults, or the key's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitValues {
    /// 0: unlimited.
    pub requests_per_minute: u32,
    /// 0: unlimited.
    pub max_concurrent: u32,
}

/// Why a call was refused, with what the client needs to retry well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Rate { limit: u32, retry_after: Duration },
    Concurrency { limit: u32 },
}

#[derive(Debug, Default)]
pub struct UserState {
    /// GCRA theoretical arrival time, in nanoseconds since `epoch()`.
    tat: AtomicU64,
    in_flight: AtomicU32,
}

/// Holds one concurrency slot until dropped.
#[derive(Debug)]
pub struct Permit {
    state: Option<Arc<UserState>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = &self.state {
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

const MINUTE_NANOS: u64 = 60_000_000_000;

impl UserState {
    /// Admits a call or says why not. The rate is charged only for admitted calls.
    pub fn admit(self: &Arc<Self>, limits: LimitValues) -> Result<Permit, Refusal> {
        self.admit_at(limits, now_nanos())
    }

    fn admit_at(self: &Arc<Self>, limits: LimitValues, now: u64) -> Result<Permit, Refusal> {
        let permit = if limits.max_concurrent > 0 {
            let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
            if before >= limits.max_concurrent {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::Concurrency { limit: limits.max_concurrent });
            }
            Permit { state: Some(self.clone()) }
        } else {
            Permit { state: None }
        };
        if limits.requests_per_minute > 0 {
            // `permit` is dropped on refusal, releasing the slot.
            self.take_token(limits.requests_per_minute, now)?;
        }
        Ok(permit)
    }

    fn take_token(&self, per_minute: u32, now: u64) -> Result<(), Refusal> {
        let interval = MINUTE_NANOS / u64::from(per_minute);
        // A full minute's allowance may arrive at once.
        let tolerance = interval * u64::from(per_minute - 1);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let earliest = tat.saturating_sub(tolerance);
            if now < earliest {
                return Err(Refusal::Rate { limit: per_minute, retry_after: Duration::from_nanos(earliest - now) });
            }
            let next = tat.max(now) + interval;
            match self.tat.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn sixty_per_minute_gives_the_sixty_first_a_refusal() {
        let u = Arc::new(UserState::default());
        let limits = LimitValues { requests_per_minute: 60, max_concurrent: 0 };
        let t0 = 100 * S;
        for i in 0..60 {
            assert!(u.admit_at(limits, t0 + i).is_ok(), "call {i}");
        }
        match u.admit_at(limits, t0 + 60) {
            Err(Refusal::Rate { limit: 60, retry_after }) => {
                assert!(retry_after <= Duration::from_secs(1) && retry_after > Duration::from_millis(990));
            }
            other => panic!("{other:?}"),
        }
        // One token comes back each second; never more than the allowance per minute.
        assert!(u.admit_at(limits, t0 + S).is_ok());
        assert!(u.admit_at(limits, t0 + S + 1).is_err());
        let mut admitted = 0;
        for ms in (0..60_000).step_by(10) {
            if u.admit_at(limits, t0 + 2 * S + ms * 1_000_000).is_ok() {
                admitted += 1;
            }
        }
        assert!((59..=61).contains(&admitted), "steady rate: {admitted} in a minute");
    }

    #[test]
    fn concurrency_slots_are_released_by_dropping_the_permit() {
        let u = Arc::new(UserState::default());
        let limits = LimitValues { requests_per_minute: 0, max_concurrent: 10 };
        let permits: Vec<Permit> = (0..10).map(|_| u.admit_at(limits, 0).unwrap()).collect();
        assert_eq!(u.admit_at(limits, 0).unwrap_err(), Refusal::Concurrency { limit: 10 });
        assert_eq!(u.in_flight(), 10);
        drop(permits);
        assert_eq!(u.in_flight(), 0);
        assert!(u.admit_at(limits, 0).is_ok());
    }

    #[test]
    fn a_rate_refusal_does_not_hold_a_slot_and_zero_means_unlimited() {
        let u = Arc::new(UserState::default());
        let limits = LimitValues { requests_per_minute: 1, max_concurrent: 5 };
        let _p = u.admit_at(limits, S).unwrap();
        assert!(matches!(u.admit_at(limits, S), Err(Refusal::Rate { .. })));
        assert_eq!(u.in_flight(), 1);
        let free = LimitValues { requests_per_minute: 0, max_concurrent: 0 };
        for _ in 0..1000 {
            std::mem::forget(u.admit_at(free, S).unwrap());
        }
    }

    #[test]
    fn shared_across_threads_the_limit_holds() {
        let u = Arc::new(UserState::default());
        let limits = LimitValues { requests_per_minute: 100, max_concurrent: 0 };
        let t = 5 * S;
        let ok: usize = (0..4)
            .map(|_| {
                let u = u.clone();
                std::thread::spawn(move || (0..100).filter(|_| u.admit_at(limits, t).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(ok, 100);
    }
}
