//! Rate limits and the failed-login backoff: cheap refusals for floods and password guessing.
//!
//! Token buckets come from `governor` (keyed by client address, phone number or user). The
//! failed-login backoff follows the OWASP authentication guidance: after a few consecutive
//! failures for one account, each further attempt must wait, twice as long each time. All state
//! is in memory, per server process, and pruned by [`RateLimits::prune`].

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::{
    config::Limits,
    error::{AppError, AppResult},
};

/// Longest wait the failed-login backoff imposes.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How long a run of failed logins is remembered after the last one.
const FAILURE_MEMORY: Duration = Duration::from_secs(60 * 60);

/// Consecutive failed logins for one phone number.
struct Failures {
    count: u32,
    last: Instant,
    /// No attempt is accepted before this.
    blocked_until: Option<Instant>,
}

/// The server's rate limiters.
pub struct RateLimits {
    auth_by_address: DefaultKeyedRateLimiter<IpAddr>,
    auth_by_phone: DefaultKeyedRateLimiter<String>,
    sends_by_user: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    failures_before_backoff: u32,
    /// Failed logins by phone number. A std mutex: held only for a map lookup.
    failed_logins: Mutex<HashMap<String, Failures>>,
}

fn per_minute(count: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
}

impl RateLimits {
    /// Limiters sized by `limits`.
    pub fn new(limits: &Limits) -> Self {
        let per_second =
            NonZeroU32::new(limits.messages_per_second_per_user).unwrap_or(NonZeroU32::MIN);
        RateLimits {
            auth_by_address: RateLimiter::keyed(per_minute(limits.auth_per_minute_per_address)),
            auth_by_phone: RateLimiter::keyed(per_minute(limits.auth_per_minute_per_phone)),
            sends_by_user: RateLimiter::keyed(Quota::per_second(per_second)),
            clock: DefaultClock::default(),
            failures_before_backoff: limits.login_failures_before_backoff,
            failed_logins: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a `register` or `login` attempt against the client address and the phone number.
    pub fn check_auth(&self, address: Option<IpAddr>, phone_number: &str) -> AppResult<()> {
        if let Some(address) = address {
            self.check(
                &self.auth_by_address,
                &address,
                "too many sign-in attempts from this address",
            )?;
        }
        self.check(
            &self.auth_by_phone,
            &phone_number.to_string(),
            "too many sign-in attempts for this phone number",
        )
    }

    /// Counts a `sendMessage` against the sender.
    pub fn check_send(&self, user_id: &str) -> AppResult<()> {
        self.check(&self.sends_by_user, &user_id.to_string(), "too many messages; slow down")
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        message: &str,
    ) -> AppResult<()> {
        limiter.check_key(key).map_err(|not_until| AppError::RateLimited {
            message: message.to_string(),
            retry_after_seconds: seconds_rounded_up(not_until.wait_time_from(self.clock.now())),
        })
    }

    /// Refuses a login for `phone_number` while its failed-login backoff is running.
    pub fn check_login_backoff(&self, phone_number: &str) -> AppResult<()> {
        let failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        let blocked_until = failures.get(phone_number).and_then(|f| f.blocked_until);
        match blocked_until {
            Some(until) if until > Instant::now() => Err(AppError::RateLimited {
                message: "too many failed logins for this phone number; wait before trying again"
                    .into(),
                retry_after_seconds: seconds_rounded_up(until - Instant::now()),
            }),
            _ => Ok(()),
        }
    }

    /// Records a failed login; past the threshold, starts (or doubles) the backoff.
    pub fn record_login_failure(&self, phone_number: &str) {
        let now = Instant::now();
        let mut failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        let entry = failures.entry(phone_number.to_string()).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        entry.count += 1;
        entry.last = now;
        if entry.count >= self.failures_before_backoff {
            let doublings = (entry.count - self.failures_before_backoff).min(20);
            let wait = Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF);
            entry.blocked_until = Some(now + wait);
        }
    }

    /// Clears the failed-login record after a successful login.
    pub fn record_login_success(&self, phone_number: &str) {
        self.failed_logins.lock().unwrap_or_else(|p| p.into_inner()).remove(phone_number);
    }

    /// Forgets idle keys so memory stays proportional to recent traffic; run periodically.
    pub fn prune(&self) {
        self.auth_by_address.retain_recent();
        self.auth_by_phone.retain_recent();
        self.sends_by_user.retain_recent();
        let now = Instant::now();
        self.failed_logins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, failures| now - failures.last < FAILURE_MEMORY);
    }
}

fn seconds_rounded_up(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        crate::config::Config::from_lookup(|name| match name {
            "RATE_LIMIT_AUTH_PER_ADDRESS" => Some("3".into()),
            "RATE_LIMIT_AUTH_PER_PHONE" => Some("2".into()),
            "RATE_LIMIT_MESSAGES_PER_USER" => Some("2".into()),
            "LOGIN_FAILURES_BEFORE_BACKOFF" => Some("3".into()),
            _ => None,
        })
        .unwrap()
        .limits
    }

    #[test]
    fn auth_attempts_are_limited_per_phone_and_per_address() {
        let limits = RateLimits::new(&limits());
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.check_auth(Some(address), "+1").is_ok());
        assert!(limits.check_auth(Some(address), "+1").is_ok());
        let error = limits.check_auth(Some(address), "+1").unwrap_err();
        assert!(
            matches!(error, AppError::RateLimited { retry_after_seconds, .. } if retry_after_seconds >= 1)
        );
        // Every attempt counts against the address: its three are used up, whatever the number.
        assert_eq!(limits.check_auth(Some(address), "+2").unwrap_err().code(), "RATE_LIMITED");
        // And the number stays limited from any other address.
        let elsewhere: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(limits.check_auth(Some(elsewhere), "+1").unwrap_err().code(), "RATE_LIMITED");
        assert!(limits.check_auth(Some(elsewhere), "+3").is_ok());
    }

    #[test]
    fn sends_are_limited_per_user() {
        let limits = RateLimits::new(&limits());
        assert!(limits.check_send("u1").is_ok());
        assert!(limits.check_send("u1").is_ok());
        assert!(limits.check_send("u1").is_err());
        assert!(limits.check_send("u2").is_ok());
    }

    #[test]
    fn failed_logins_back_off_until_a_success() {
        let limits = RateLimits::new(&limits());
        for _ in 0..2 {
            limits.record_login_failure("+1");
            assert!(limits.check_login_backoff("+1").is_ok());
        }
        limits.record_login_failure("+1");
        assert_eq!(limits.check_login_backoff("+1").unwrap_err().code(), "RATE_LIMITED");
        assert!(limits.check_login_backoff("+2").is_ok(), "other accounts are not affected");
        limits.record_login_success("+1");
        assert!(limits.check_login_backoff("+1").is_ok());
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(seconds_rounded_up(Duration::from_millis(1)), 1);
        assert_eq!(seconds_rounded_up(Duration::from_secs(2)), 2);
    }
}
