//! Rate limits and the failed-login backoff: cheap refusals for floods and password guessing.
//!
//! Token buckets (GCRA). Sign-ins are keyed by [`ClientNetwork`] (an address, an IPv6 /64, or
//! one shared bucket when the address is unknown). The failed-login backoff follows the OWASP
//! authentication guidance, keyed by phone number *and* client network, so a stranger's wrong
//! guesses slow down the stranger, not the account's owner; across all networks, a number is
//! locked only after [`MAX_CONSECUTIVE_FAILURES`] consecutive failures (NIST SP 800-63B allows
//! at most 100).
//!
//! Without Redis all state is in this process (`governor` buckets, a map of failures, pruned by
//! [`RateLimits::prune`]). With `REDIS_URL` it is in Redis ([`redis::RedisLimits`], atomic
//! scripts), so N instances do not give N times the budget; if Redis fails, each instance falls
//! back to its own state until Redis answers again (limits then hold per instance: degraded,
//! never unlimited).

pub mod redis;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use self::redis::RedisLimits;
use crate::{
    client_address::ClientNetwork,
    config::Limits,
    error::{AppError, AppResult},
};

/// Longest wait the failed-login backoff imposes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How long a run of failed logins is remembered after the last one.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60 * 60);
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

/// One kind of limit: a token bucket per key.
pub struct Limit {
    /// Names the limit's keys in Redis.
    pub name: &'static str,
    /// One token comes back every `interval`.
    pub interval: Duration,
    /// Tokens a full bucket holds.
    pub burst: u32,
    /// The buckets of this process.
    local: DefaultKeyedRateLimiter<String>,
}

impl Limit {
    fn new(name: &'static str, quota: Quota) -> Self {
        Limit {
            name,
            interval: quota.replenish_interval(),
            burst: quota.burst_size().get(),
            local: RateLimiter::keyed(quota),
        }
    }
}

/// The server's rate limiters.
pub struct RateLimits {
    auth_by_network: Limit,
    auth_by_phone: Limit,
    sends_by_user: Limit,
    lookups_by_user: Limit,
    typing_by_user: Limit,
    account_changes_by_user: Limit,
    codes_by_phone: Limit,
    codes_by_network: Limit,
    clock: DefaultClock,
    failures_before_backoff: u32,
    /// A std mutex: held only for map lookups.
    failed_logins: Mutex<FailedLogins>,
    /// Redis, when instances share limits.
    shared: Option<RedisLimits>,
}

fn per_minute(count: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
}

fn per_hour(count: u32) -> Quota {
    Quota::per_hour(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
}

fn per_second(count: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
}

impl RateLimits {
    /// Limiters sized by `limits`, kept in this process, or in Redis when `shared` is given.
    pub fn new(limits: &Limits, shared: Option<RedisLimits>) -> Self {
        RateLimits {
            auth_by_network: Limit::new("auth", per_minute(limits.auth_per_minute_per_address)),
            auth_by_phone: Limit::new("auth-phone", per_minute(limits.auth_per_minute_per_phone)),
            sends_by_user: Limit::new("send", per_second(limits.messages_per_second_per_user)),
            lookups_by_user: Limit::new("lookup", per_minute(limits.lookups_per_minute_per_user)),
            typing_by_user: Limit::new("typing", per_second(limits.typing_per_second_per_user)),
            account_changes_by_user: Limit::new(
                "account",
                per_minute(limits.account_changes_per_minute_per_user),
            ),
            codes_by_phone: Limit::new(
                "code-phone",
                per_hour(limits.verification_sends_per_hour_per_phone),
            ),
            codes_by_network: Limit::new(
                "code",
                per_hour(limits.verification_sends_per_hour_per_address),
            ),
            clock: DefaultClock::default(),
            failures_before_backoff: limits.login_failures_before_backoff,
            failed_logins: Mutex::default(),
            shared,
        }
    }

    /// Counts a `register` or `login` attempt against the client network, and against the
    /// phone number from that network.
    pub async fn check_auth(&self, client: ClientNetwork, phone_number: &str) -> AppResult<()> {
        let message = "too many sign-in attempts from this address";
        self.check(&self.auth_by_network, client.to_string(), message).await?;
        let message = "too many sign-in attempts for this phone number";
        self.check(&self.auth_by_phone, format!("{phone_number}|{client}"), message).await
    }

    /// Counts a `sendMessage` against the sender.
    pub async fn check_send(&self, user_id: &str) -> AppResult<()> {
        self.check(&self.sends_by_user, user_id.to_string(), "too many messages; slow down").await
    }

    /// Counts a look-up of a user by phone number against the caller (every alias and every
    /// batch entry is a look-up), so accounts cannot be enumerated by phone number.
    pub async fn check_lookup(&self, user_id: &str) -> AppResult<()> {
        let message = "too many phone number look-ups";
        self.check(&self.lookups_by_user, user_id.to_string(), message).await
    }

    /// Counts a change to the caller's account (profile, password, privacy).
    pub async fn check_account_change(&self, user_id: &str) -> AppResult<()> {
        let message = "too many account changes; try again later";
        self.check(&self.account_changes_by_user, user_id.to_string(), message).await
    }

    /// Counts a verification code about to be sent to `phone_number` against that number (so
    /// nobody can flood someone's phone with texts) and against the client network asking
    /// (so no client can run up the SMS bill).
    pub async fn check_code_send(
        &self,
        client: ClientNetwork,
        phone_number: &str,
    ) -> AppResult<()> {
        let message = "too many verification codes requested from this address";
        self.check(&self.codes_by_network, client.to_string(), message).await?;
        let message = "too many verification codes sent to this phone number; try again later";
        self.check(&self.codes_by_phone, phone_number.to_string(), message).await
    }

    /// Counts a `setTyping` against the caller.
    pub async fn check_typing(&self, user_id: &str) -> AppResult<()> {
        self.check(&self.typing_by_user, user_id.to_string(), "too many typing updates").await
    }

    async fn check(&self, limit: &Limit, key: String, message: &str) -> AppResult<()> {
        let shared = match &self.shared {
            Some(shared) => shared.take(limit, &key).await,
            None => None,
        };
        let wait = match shared {
            Some(wait) => wait,
            None => limit
                .local
                .check_key(&key)
                .err()
                .map(|not_until| not_until.wait_time_from(self.clock.now())),
        };
        match wait {
            None => Ok(()),
            Some(wait) => Err(AppError::RateLimited {
                message: message.to_string(),
                retry_after_seconds: seconds_rounded_up(wait),
            }),
        }
    }

    /// Refuses a login while the backoff for this number from this network runs, or while the
    /// number is locked after too many consecutive failures from anywhere.
    pub async fn check_login_backoff(
        &self,
        client: ClientNetwork,
        phone_number: &str,
    ) -> AppResult<()> {
        let shared = match &self.shared {
            Some(shared) => shared.backoff(phone_number, client).await,
            None => None,
        };
        let wait = match shared {
            Some(wait) => wait,
            None => self.local_backoff(client, phone_number),
        };
        match wait {
            Some(wait) => Err(AppError::RateLimited {
                message: "too many failed logins for this phone number; wait before trying again"
                    .into(),
                retry_after_seconds: seconds_rounded_up(wait),
            }),
            None => Ok(()),
        }
    }

    fn local_backoff(&self, client: ClientNetwork, phone_number: &str) -> Option<Duration> {
        let failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = (phone_number.to_string(), client);
        [failures.by_client.get(&key), failures.by_number.get(phone_number)]
            .into_iter()
            .flatten()
            .filter_map(|failures| failures.blocked(now))
            .max()
    }

    /// Records a failed login; past the threshold, starts (or doubles) the backoff for this
    /// network, and past the ceiling locks the number.
    pub async fn record_login_failure(&self, client: ClientNetwork, phone_number: &str) {
        if let Some(shared) = &self.shared
            && shared.record_failure(phone_number, client, self.failures_before_backoff).await
        {
            return;
        }
        let now = Instant::now();
        let mut failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        let key = (phone_number.to_string(), client);
        let entry = failures.by_client.entry(key).or_insert_with(|| Failures::new(now));
        entry.count += 1;
        entry.last = now;
        if entry.count >= self.failures_before_backoff {
            entry.blocked_until =
                Some(now + backoff_after(entry.count, self.failures_before_backoff));
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
    pub async fn record_login_success(&self, phone_number: &str) {
        if let Some(shared) = &self.shared {
            shared.clear_failures(phone_number).await;
        }
        let mut failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        failures.by_client.retain(|(number, _), _| number != phone_number);
        failures.by_number.remove(phone_number);
    }

    /// Forgets idle keys so memory stays proportional to recent traffic; run periodically.
    pub fn prune(&self) {
        for limit in [
            &self.auth_by_network,
            &self.auth_by_phone,
            &self.sends_by_user,
            &self.lookups_by_user,
            &self.typing_by_user,
            &self.account_changes_by_user,
            &self.codes_by_phone,
            &self.codes_by_network,
        ] {
            limit.local.retain_recent();
        }
        let now = Instant::now();
        let mut failures = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |failures: &Failures| {
            now - failures.last < FAILURE_MEMORY || failures.blocked(now).is_some()
        };
        failures.by_client.retain(|_, failures| recent(failures));
        failures.by_number.retain(|_, failures| recent(failures));
    }
}

/// The wait after the `count`th consecutive failure from one network: one second at the
/// threshold, doubling with each further failure, at most [`MAX_BACKOFF`].
pub fn backoff_after(count: u32, threshold: u32) -> Duration {
    let doublings = count.saturating_sub(threshold).min(20);
    Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF)
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

    #[tokio::test]
    async fn auth_attempts_are_limited_per_network_and_per_phone_from_it() {
        let limits = RateLimits::new(&limits(), None);
        let here = network("192.0.2.1");
        assert!(limits.check_auth(here, "+1").await.is_ok());
        assert!(limits.check_auth(here, "+1").await.is_ok());
        let error = limits.check_auth(here, "+1").await.unwrap_err();
        assert!(
            matches!(error, AppError::RateLimited { retry_after_seconds, .. } if retry_after_seconds >= 1)
        );
        // Every attempt counts against the network: its three are used up, whatever the number.
        assert_eq!(limits.check_auth(here, "+2").await.unwrap_err().code(), "RATE_LIMITED");
        // Someone else can still sign in to that number.
        assert!(limits.check_auth(network("192.0.2.2"), "+1").await.is_ok());
        // An unknown address is one shared bucket, never unlimited.
        for _ in 0..3 {
            let _ = limits.check_auth(ClientNetwork::Unknown, "+4").await;
        }
        assert!(limits.check_auth(ClientNetwork::Unknown, "+5").await.is_err());
    }

    #[tokio::test]
    async fn sends_and_lookups_are_limited_per_user() {
        let limits = RateLimits::new(&limits(), None);
        assert!(limits.check_send("u1").await.is_ok());
        assert!(limits.check_send("u1").await.is_ok());
        assert!(limits.check_send("u1").await.is_err());
        assert!(limits.check_send("u2").await.is_ok());
        assert!(limits.check_lookup("u1").await.is_ok());
        assert!(limits.check_lookup("u1").await.is_ok());
        assert!(limits.check_lookup("u1").await.is_err());
    }

    #[tokio::test]
    async fn failed_logins_back_off_for_the_guesser_not_the_owner() {
        let limits = RateLimits::new(&limits(), None);
        let (stranger, owner) = (network("198.51.100.7"), network("192.0.2.1"));
        for _ in 0..2 {
            limits.record_login_failure(stranger, "+1").await;
            assert!(limits.check_login_backoff(stranger, "+1").await.is_ok());
        }
        limits.record_login_failure(stranger, "+1").await;
        assert_eq!(
            limits.check_login_backoff(stranger, "+1").await.unwrap_err().code(),
            "RATE_LIMITED"
        );
        assert!(
            limits.check_login_backoff(owner, "+1").await.is_ok(),
            "the owner is not locked out"
        );
        assert!(
            limits.check_login_backoff(stranger, "+2").await.is_ok(),
            "other accounts are not affected"
        );
        limits.record_login_success("+1").await;
        assert!(limits.check_login_backoff(stranger, "+1").await.is_ok());
    }

    #[tokio::test]
    async fn a_number_is_locked_after_the_ceiling_of_failures_from_anywhere() {
        let limits = RateLimits::new(&limits(), None);
        for n in 0..MAX_CONSECUTIVE_FAILURES {
            let from = network(&format!("10.0.{}.{}", n / 250, n % 250));
            assert!(limits.check_login_backoff(network("192.0.2.1"), "+1").await.is_ok());
            limits.record_login_failure(from, "+1").await;
        }
        let error = limits.check_login_backoff(network("192.0.2.1"), "+1").await.unwrap_err();
        assert!(
            matches!(error, AppError::RateLimited { retry_after_seconds, .. } if retry_after_seconds > 60)
        );
    }

    #[tokio::test]
    async fn waits_round_up_to_whole_seconds() {
        assert_eq!(seconds_rounded_up(Duration::from_millis(1)), 1);
        assert_eq!(seconds_rounded_up(Duration::from_secs(2)), 2);
    }
}
