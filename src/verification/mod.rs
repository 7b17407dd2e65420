//! Phone verification: an account proves it owns its phone number with a one-time code.
//!
//! With `PHONE_VERIFICATION` on, `register` creates an *unverified* account and texts a code
//! to its number. Until `verifyPhone` gets that code the account cannot send, cannot be found
//! by number, and cannot be sent to. Codes are six random digits, kept only as a keyed hash,
//! good for `PHONE_VERIFICATION_CODE_TTL` and [`PendingCode::MAX_ATTEMPTS`] tries, and used
//! once. Texts are limited per number and per client address. An account left unverified for
//! `PHONE_VERIFICATION_CLAIM_TTL` is a stale claim: it is removed (by the next registration of
//! its number, or the periodic sweep in `lib.rs`) and the number is free, so whoever registered someone
//! else's number cannot keep its owner out.

pub mod sender;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use self::sender::CodeSender;
use crate::{
    client_address::ClientNetwork,
    config::VerificationConfig,
    domain::{PendingCode, PhoneNumber, SessionId, User, UserId, VerificationCode, Viewer},
    error::{AppError, AppResult},
    rate_limits::RateLimits,
    secret::Secret,
    store::Store,
};

/// Issues, sends and checks verification codes, and releases stale claims.
#[derive(Clone)]
pub struct PhoneVerification {
    store: Arc<dyn Store>,
    limits: Arc<RateLimits>,
    /// `None` when verification is off.
    sender: Option<Arc<dyn CodeSender>>,
    /// Key of the code hashes: a copy of the store alone cannot test the million codes.
    key: Arc<Secret<Vec<u8>>>,
    code_ttl: TimeDelta,
    claim_ttl: TimeDelta,
}

/// A code on its way to a phone.
#[derive(Debug, Clone, Copy)]
pub struct CodeSent {
    /// When the code stops being accepted.
    pub expires_at: DateTime<Utc>,
}

fn time_delta(duration: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

impl PhoneVerification {
    /// The service; codes go out through `sender`, or verification is off when it is `None`.
    /// `key` keys the code hashes (the token-signing secret serves: every instance has it).
    pub fn new(
        store: Arc<dyn Store>,
        limits: Arc<RateLimits>,
        sender: Option<Arc<dyn CodeSender>>,
        key: &[u8],
        config: &VerificationConfig,
    ) -> Self {
        let mut derived = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
        derived.update(b"chatapp phone verification codes");
        PhoneVerification {
            store,
            limits,
            sender,
            key: Arc::new(Secret::new(derived.finalize().into_bytes().to_vec())),
            code_ttl: time_delta(config.code_ttl),
            claim_ttl: time_delta(config.claim_ttl),
        }
    }

    /// Whether new accounts must verify their number.
    pub fn is_required(&self) -> bool {
        self.sender.is_some()
    }

    /// Whether `user` is an unverified account older than the claim period: it no longer
    /// holds its number, and cannot sign in.
    pub fn is_stale_claim(&self, user: &User) -> bool {
        !user.phone_verified && user.created_at < Utc::now() - self.claim_ttl
    }

    /// Before registering `phone_number`: removes a stale unverified claim on it. Returns the
    /// sessions that ended.
    pub async fn release_stale_claim(
        &self,
        phone_number: &PhoneNumber,
    ) -> AppResult<Vec<SessionId>> {
        let stale_before = Utc::now() - self.claim_ttl;
        Ok(self.store.release_unverified(stale_before, Some(phone_number)).await?)
    }

    /// Gives up the claim `register` just made when its code could not be sent, so the number
    /// is free again at once.
    pub async fn abandon_claim(&self, user: &User) -> AppResult<Vec<SessionId>> {
        let everything = Utc::now() + TimeDelta::seconds(1);
        Ok(self.store.release_unverified(everything, Some(&user.phone_number)).await?)
    }

    /// Makes a new code for `user`, keeps its hash (replacing any earlier code) and sends it.
    /// Limits must have been checked by the caller.
    pub async fn send_code(&self, user: &User) -> AppResult<CodeSent> {
        let Some(sender) = &self.sender else {
            return Err(AppError::BadUserInput("this server does not verify phone numbers".into()));
        };
        let code = VerificationCode::generate().map_err(AppError::internal)?;
        let expires_at = Utc::now() + self.code_ttl;
        let pending =
            PendingCode { code_hash: self.hash(&user.id, &code), expires_at, attempts: 0 };
        self.store.save_verification_code(&user.id, pending).await?;
        sender.send(&user.phone_number, &code).await.map_err(|error| {
            AppError::ServiceUnavailable(format!("verification code not sent: {error}"))
        })?;
        tracing::info!(user = %user.id, "verification code sent");
        Ok(CodeSent { expires_at })
    }

    /// Sends the caller a new code (the old one stops working). Limited per number and per
    /// client address.
    pub async fn resend(&self, client: ClientNetwork, viewer: &Viewer) -> AppResult<CodeSent> {
        let user = self.unverified_caller(viewer).await?;
        self.limits.check_code_send(client, user.phone_number.as_str()).await?;
        self.send_code(&user).await
    }

    /// Checks `code` against the caller's pending one and, if it is right, marks their number
    /// verified. Every try counts, right or wrong; a code is dead after
    /// [`PendingCode::MAX_ATTEMPTS`] tries or once it expires. Verifying a verified account
    /// changes nothing (a retried request succeeds again). Limited per caller like other
    /// account changes.
    #[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
    pub async fn verify(&self, viewer: &Viewer, code: &VerificationCode) -> AppResult<User> {
        // Each try writes (its count), so tries are limited per caller besides per code.
        self.limits.check_account_change(viewer.user_id.as_str()).await?;
        let user = self.caller(viewer).await?;
        if user.phone_verified {
            return Ok(user);
        }
        let request_new = "request a new one with resendVerificationCode";
        let Some(pending) = self.store.count_verification_attempt(&user.id).await? else {
            return Err(AppError::BadUserInput(format!("no code is pending; {request_new}")));
        };
        if pending.expires_at <= Utc::now() {
            return Err(AppError::BadUserInput(format!("the code has expired; {request_new}")));
        }
        if pending.attempts > PendingCode::MAX_ATTEMPTS {
            return Err(AppError::BadUserInput(format!("too many wrong codes; {request_new}")));
        }
        if !self.matches(&user.id, code, &pending.code_hash) {
            let left = PendingCode::MAX_ATTEMPTS - pending.attempts;
            return Err(AppError::BadUserInput(format!(
                "the code is not correct ({left} {} left)",
                if left == 1 { "try" } else { "tries" }
            )));
        }
        if !self.store.mark_phone_verified(&user.id).await? {
            return Err(AppError::unauthenticated());
        }
        tracing::info!("phone number verified");
        Ok(User { phone_verified: true, ..user })
    }

    async fn caller(&self, viewer: &Viewer) -> AppResult<User> {
        let user = self.store.user_by_id(&viewer.user_id).await?;
        user.filter(|user| !user.is_deleted()).ok_or_else(AppError::unauthenticated)
    }

    async fn unverified_caller(&self, viewer: &Viewer) -> AppResult<User> {
        let user = self.caller(viewer).await?;
        if user.phone_verified {
            return Err(AppError::BadUserInput("this phone number is already verified".into()));
        }
        Ok(user)
    }

    /// HMAC-SHA256 of the code, bound to the user: a code hash copied onto another account
    /// does not verify it.
    fn mac(&self, user_id: &UserId, code: &VerificationCode) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(self.key.expose()).expect("any key length");
        mac.update(user_id.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(code.expose().as_bytes());
        mac
    }

    fn hash(&self, user_id: &UserId, code: &VerificationCode) -> String {
        hex(&self.mac(user_id, code).finalize().into_bytes())
    }

    /// Compares in constant time.
    fn matches(&self, user_id: &UserId, code: &VerificationCode, stored: &str) -> bool {
        let Some(stored) = unhex(stored) else { return false };
        self.mac(user_id, code).verify_slice(&stored).is_ok()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::{sender::SendError, *};
    use crate::{
        config::Config,
        domain::{NewUser, PasswordHash, Username},
        testing::{World, limits},
    };

    /// Keeps what it is asked to send.
    #[derive(Default)]
    struct Outbox(Mutex<Vec<(String, String)>>);

    #[async_trait]
    impl CodeSender for Outbox {
        async fn send(
            &self,
            phone: &PhoneNumber,
            code: &VerificationCode,
        ) -> Result<(), SendError> {
            self.0.lock().unwrap().push((phone.as_str().into(), code.expose().into()));
            Ok(())
        }
    }

    async fn unverified(world: &World, phone: &str) -> User {
        let new = NewUser {
            phone_number: PhoneNumber::parse(phone).unwrap(),
            username: Username::parse("claimant").unwrap(),
            password_hash: PasswordHash::new("$2b$04$hash".into()),
            phone_verified: false,
        };
        world.store.create_user(new).await.unwrap()
    }

    #[tokio::test]
    async fn the_store_keeps_a_keyed_hash_bound_to_the_account_never_the_code() {
        let world = World::new();
        let outbox = Arc::new(Outbox::default());
        let config = Config::from_lookup(|_| None).unwrap().phone_verification;
        let service = |key: &[u8]| {
            let sender: Arc<dyn CodeSender> = outbox.clone();
            PhoneVerification::new(world.store.clone(), limits(|_| {}), Some(sender), key, &config)
        };
        let verification = service(b"server key");
        let alice = unverified(&world, "+12025550143").await;
        let bob = unverified(&world, "+12025550144").await;
        verification.send_code(&alice).await.unwrap();
        let code = outbox.0.lock().unwrap()[0].1.clone();
        let code = VerificationCode::parse(&code).unwrap();

        let stored = world.store.count_verification_attempt(&alice.id).await.unwrap().unwrap();
        assert_eq!(stored.code_hash.len(), 64, "hex of HMAC-SHA256");
        assert!(!stored.code_hash.contains(code.expose()));
        // Another server key, or the same code on another account, gives another hash.
        assert_ne!(service(b"other key").hash(&alice.id, &code), stored.code_hash);
        assert_ne!(verification.hash(&bob.id, &code), stored.code_hash);
        // Alice's hash copied onto Bob's account does not verify Bob with Alice's code.
        world.store.save_verification_code(&bob.id, stored.clone()).await.unwrap();
        let as_bob = world.viewer(&bob).await;
        assert!(verification.verify(&as_bob, &code).await.is_err());

        let as_alice = world.viewer(&alice).await;
        assert!(verification.verify(&as_alice, &code).await.unwrap().phone_verified);
    }
}
