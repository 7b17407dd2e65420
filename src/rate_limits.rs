//! Rate limits and the failed-login backoff: cheap refusals for floods and password guessing.
//!
//! Token buckets come from `governor`. Sign-ins are keyed by [`ClientNetwork`] (an address, an
//! IPv6 /64, or one shared bucket when the address is unknown). The failed-login backoff follows
//! the OWASP authentication guidance, keyed by phone number *and* client network, so a stranger's
//! wrong guesses slow down the stranger, not the account's owner; across all networks, a number
//! is locked only after [`MAX_CONSECUTIVE_FAILURES`] consecutive failures (NIST SP 800-63B allows
//! at most 100). All state is in memory, per server process, and pruned by [`RateLimits::prune`].

use std::{
    collections::HashMap,
    hash::Hash,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::{
    client_address::ClientNetwork,
    config::Limits,
    error::{AppError, AppResult},
};

/// Longest wait the failed-login backoff imposes.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How long a run of failed logins is remembered after the last one.
const FAILURE_MEMORY: Duration = Duration::from_secs(60 * 60);
/// Consecutive failed logins for one number, from anywhere, after which it is locked for
/// [`MAX_BACKOFF`]: the ceiling on distributed guessing (NIST SP 800-63B: at most 100).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 100;

/// Consecutive failed logins.
struct Failures {
    count: u32,
    last: Instant,
    /// No attempt is accepted before this.
    blocked_until: Option<Instant>,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Failures { count: 0, last: now, blocked_until: None }
    }

    fn blocked(&self, now: Instant) -> Option<Duration> {
        self.blocked_until.filter(|until| *until > now).map(|until| until - now)
    }
}

/// Failed-login state: per (number, network) for the backoff, per number for the ceiling.
#[derive(Default)]
struct FailedLogins {
    by_client: HashMap<(String, ClientNetwork), Failures>,
    by_number: HashMap<String, Failures>,
}

/// The server's rate limiters.
pub struct RateLimits {
    auth_by_network: DefaultKeyedRateLimiter<ClientNetwork>,
    auth_by_phone: DefaultKeyedRateLimiter<(String, ClientNetwork)>,
    sends_by_user: DefaultKeyedRateLimiter<String>,
    lookups_by_user: DefaultKeyedRateLimiter<String>,
    typing_by_user: DefaultKeyedRateLimiter<String>,
    account_changes_by_user: DefaultKeyedRateLimiter<String>,
    codes_by_phone: DefaultKeyedRateLimiter<String>,
    codes_by_network: DefaultKeyedRateLimiter<ClientNetwork>,
    clock: DefaultClock,
    failures_before_backoff: u32,
    /// A std mutex: held only for map lookups.
    failed_logins: Mutex<FailedLogins>,
}

fn per_minute(count: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
}

fn per_hour(count: u32) -> Quota {
    Quota::per_hour(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
}

impl RateLimits {
    /// Limiters sized by `limits`.
    pub fn new(limits: &Limits) -> Self {
        let per_second =
            NonZeroU32::new(limits.messages_per_second_per_user).unwrap_or(NonZeroU32::MIN);
        RateLimits {
            auth_by_network: RateLimiter::keyed(per_minute(limits.auth_per_minute_per_address)),
            auth_by_phone: RateLimiter::keyed(per_minute(limits.auth_per_minute_per_phone)),
            sends_by_user: RateLimiter::keyed(Quota::per_second(per_second)),
            lookups_by_user: RateLimiter::keyed(per_minute(limits.lookups_per_minute_per_user)),
            typing_by_user: RateLimiter::keyed(Quota::per_second(
                NonZeroU32::new(limits.typing_per_second_per_user).unwrap_or(NonZeroU32::MIN),
            )),
            account_changes_by_user: RateLimiter::keyed(per_minute(
                limits.account_changes_per_minute_per_user,
            )),
            codes_by_phone: RateLimiter::keyed(per_hour(
                limits.verification_sends_per_hour_per_phone,
            )),
            codes_by_network: RateLimiter::keyed(per_hour(
                limits.verification_sends_per_hour_per_address,
            )),
            clock: DefaultClock::default(),
            failures_before_backoff: limits.login_failures_before_backoff,
            failed_logins: Mutex::default(),
        }
    }

    /// Counts a `register` or `login` attempt against the client network, and against the
    /// phone number from that network.
    pub fn check_auth(&self, client: ClientNetwork, phone_number: &str) -> AppResult<()> {
        self.check(&self.auth_by_network, &client, "too many sign-in attempts from this address")?;
        self.check(
            &self.auth_by_phone,
            &(phone_number.to_string(), client),
            "too many sign-in attempts for this phone number",
        )
    }

    /// Counts a `sendMessage` against the sender.
    pub fn check_send(&self, user_id: &str) -> AppResult<()> {
        self.check(&self.sends_by_user, &user_id.to_string(), "too many messages; slow down")
    }

    /// Counts a look-up of a user by phone number against the caller (every alias and every
    /// batch entry is a look-up), so accounts cannot be enumerated by phone number.
    pub fn check_lookup(&self, user_id: &str) -> AppResult<()> {
        self.check(&self.lookups_by_user, &user_id.to_string(), "too many phone number look-ups")
    }

    /// Counts a change to the caller's account (profile, password, privacy).
    pub fn check_account_change(&self, user_id: &str) -> AppResult<()> {
        let message = "too many account changes; try again later";
        self.check(&self.account_changes_by_user, &user_id.to_string(), message)
    }

    /// Counts a verification code about to be sent to `phone_number` against that number (so
    /// nobody can flood someone's phone with texts) and against the client network asking
    /// (so no client can run up the SMS bill).
    pub fn check_code_send(&self, client: ClientNetwork, phone_number: &str) -> AppResult<()> {
        let message = "too many verification codes requested from this address";
        self.check(&self.codes_by_network, &client, message)?;
        let message = "too many verification codes sent to this phone number; try again later";
        self.check(&self.codes_by_phone, &phone_number.to_string(), message)
    }

    /// Counts a `setTyping` against the caller.
    pub fn check_typing(&self, user_id: &str) -> AppResult<()> {
        self.check(&self.typing_by_user, &user_id.to_string(), "too many typing updates")
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

    /// Refuses a login while the backoff for this number from this network runs, or while the
    /// number is locked after too many consecutive failures from anywhere.
    pub fn check_login_backoff(&self, client: ClientNetwork, phone_number: &str) -> AppResult<()> {
        let failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = (phone_number.to_string(), client);
        let wait = [failures.by_client.get(&key), failures.by_number.get(phone_number)]
            .into_iter()
            .flatten()
            .filter_map(|failures| failures.blocked(now))
            .max();
        match wait {
            Some(wait) => Err(AppError::RateLimited {
                message: "too many failed logins for this phone number; wait before trying again"
                    .into(),
                retry_after_seconds: seconds_rounded_up(wait),
            }),
            None => Ok(()),
        }
    }

    /// Records a failed login; past the threshold, starts (or doubles) the backoff for this
    /// network, and past the ceiling locks the number.
    pub fn record_login_failure(&self, client: ClientNetwork, phone_number: &str) {
        let now = Instant::now();
        let mut failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        let key = (phone_number.to_string(), client);
        let entry = failures.by_client.entry(key).or_insert_with(|| Failures::new(now));
        entry.count += 1;
        entry.last = now;
        if entry.count >= self.failures_before_backoff {
            let doublings = (entry.count - self.failures_before_backoff).min(20);
            let wait = Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF);
            entry.blocked_until = Some(now + wait);
        }
        let number = failures
            .by_number
            .entry(phone_number.to_string())
            .or_insert_with(|| Failures::new(now));
        number.count += 1;
        number.last = now;
        if number.count >= MAX_CONSECUTIVE_FAILURES {
            number.count = 0;
            number.blocked_until = Some(now + MAX_BACKOFF);
        }
    }

    /// Clears the failed-login record of a number after a successful login.
    pub fn record_login_success(&self, phone_number: &str) {
        let mut failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        failures.by_client.retain(|(number, _), _| number != phone_number);
        failures.by_number.remove(phone_number);
    }

    /// Forgets idle keys so memory stays proportional to recent traffic; run periodically.
    pub fn prune(&self) {
        self.auth_by_network.retain_recent();
        self.auth_by_phone.retain_recent();
        self.sends_by_user.retain_recent();
        self.lookups_by_user.retain_recent();
        self.typing_by_user.retain_recent();
        self.account_changes_by_user.retain_recent();
        let now = Instant::now();
        let mut failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |failures: &Failures| {
            now - failures.last < FAILURE_MEMORY || failures.blocked(now).is_some()
        };
        failures.by_client.retain(|_, failures| recent(failures));
        failures.by_number.retain(|_, failures| recent(failures));
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
            "RATE_LIMIT_LOOKUPS_PER_USER" => Some("2".into()),
            _ => None,
        })
        .unwrap()
        .limits
    }

    fn network(address: &str) -> ClientNetwork {
        crate::client_address::ClientAddress(Some(address.parse().unwrap())).network()
    }

    #[test]
    fn auth_attempts_are_limited_per_network_and_per_phone_from_it() {
        let limits = RateLimits::new(&limits());
        let here = network("192.0.2.1");
        assert!(limits.check_auth(here, "+1").is_ok());
        assert!(limits.check_auth(here, "+1").is_ok());
        let error = limits.check_auth(here, "+1").unwrap_err();
        assert!(
            matches!(error, AppError::RateLimited { retry_after_seconds, .. } if retry_after_seconds >= 1)
        );
        // Every attempt counts against the network: its three are used up, whatever the number.
        assert_eq!(limits.check_auth(here, "+2").unwrap_err().code(), "RATE_LIMITED");
        // Someone else can still sign in to that number.
        assert!(limits.check_auth(network("192.0.2.2"), "+1").is_ok());
        // An unknown address is one shared bucket, never unlimited.
        for _ in 0..3 {
            let _ = limits.check_auth(ClientNetwork::Unknown, "+4");
        }
        assert!(limits.check_auth(ClientNetwork::Unknown, "+5").is_err());
    }

    #[test]
    fn sends_and_lookups_are_limited_per_user() {
        let limits = RateLimits::new(&limits());
        assert!(limits.check_send("u1").is_ok());
        assert!(limits.check_send("u1").is_ok());
        assert!(limits.check_send("u1").is_err());
        assert!(limits.check_send("u2").is_ok());
        assert!(limits.check_lookup("u1").is_ok());
        assert!(limits.check_lookup("u1").is_ok());
        assert!(limits.check_lookup("u1").is_err());
    }

    #[test]
    fn failed_logins_back_off_for_the_guesser_not_the_owner() {
        let limits = RateLimits::new(&limits());
        let (stranger, owner) = (network("198.51.100.7"), network("192.0.2.1"));
        for _ in 0..2 {
            limits.record_login_failure(stranger, "+1");
            assert!(limits.check_login_backoff(stranger, "+1").is_ok());
        }
        limits.record_login_failure(stranger, "+1");
        assert_eq!(limits.check_login_backoff(stranger, "+1").unwrap_err().code(), "RATE_LIMITED");
        assert!(limits.check_login_backoff(owner, "+1").is_ok(), "the owner is not locked out");
        assert!(
            limits.check_login_backoff(stranger, "+2").is_ok(),
            "other accounts are not affected"
        );
        limits.record_login_success("+1");
        assert!(limits.check_login_backoff(stranger, "+1").is_ok());
    }

    #[test]
    fn a_number_is_locked_after_the_ceiling_of_failures_from_anywhere() {
        let limits = RateLimits::new(&limits());
        for n in 0..MAX_CONSECUTIVE_FAILURES {
            let from = network(&format!("10.0.{}.{}", n / 250, n % 250));
            assert!(limits.check_login_backoff(network("192.0.2.1"), "+1").is_ok());
            limits.record_login_failure(from, "+1");
        }
        let error = limits.check_login_backoff(network("192.0.2.1"), "+1").unwrap_err();
        assert!(
            matches!(error, AppError::RateLimited { retry_after_seconds, .. } if retry_after_seconds > 60)
        );
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(seconds_rounded_up(Duration::from_millis(1)), 1);
        assert_eq!(seconds_rounded_up(Duration::from_secs(2)), 2);
    }
}
