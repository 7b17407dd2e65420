//! Accounts: registering and logging in, each of which starts a session; changing a password;
//! deleting an account.

pub mod passwords;

use std::sync::Arc;

use self::passwords::PasswordHasher;
use crate::{
    client_address::ClientNetwork,
    domain::{NewUser, Password, PhoneNumber, Session, User, Username, Viewer},
    error::{AppError, AppResult},
    rate_limits::RateLimits,
    sessions::Sessions,
    store::{Constraint, Store, StoreError},
    verification::PhoneVerification,
};

/// Creates accounts and checks credentials.
#[derive(Clone)]
pub struct Accounts {
    /// Where users are kept.
    store: Arc<dyn Store>,
    /// bcrypt, off the async threads.
    passwords: PasswordHasher,
    /// Sign-in limits per client and per phone number, and the failed-login backoff.
    limits: Arc<RateLimits>,
    /// Starts the session a successful sign-in hands back.
    sessions: Sessions,
    /// Sends new accounts their code, when numbers are verified.
    verification: PhoneVerification,
}

/// What a client sent to register, parsed.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The number the account is for.
    pub phone_number: PhoneNumber,
    /// The display name.
    pub username: Username,
    /// The new password, already checked against the rules.
    pub password: Password,
}

/// What a successful registration or login hands back.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The access token to present from now on.
    pub token: String,
    /// The signed-in user.
    pub user: User,
    /// The session the token names.
    pub session: Session,
}

/// The same answer for an unknown phone number and a wrong password, so accounts cannot be
/// discovered through the login form.
fn bad_credentials() -> AppError {
    AppError::Unauthenticated("invalid phone number or password".into())
}

impl Accounts {
    /// The service over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        passwords: PasswordHasher,
        limits: Arc<RateLimits>,
        sessions: Sessions,
        verification: PhoneVerification,
    ) -> Self {
        Accounts { store, passwords, limits, sessions, verification }
    }

    /// Creates an account and signs it in. When numbers are verified, the account starts
    /// unverified and its code is sent before this returns; if it cannot be sent, the account
    /// is removed again and the error is `SERVICE_UNAVAILABLE`.
    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        client: ClientNetwork,
        registration: Registration,
    ) -> AppResult<SignedIn> {
        let Registration { phone_number, username, password } = registration;
        self.limits.check_auth(client, phone_number.as_str()).await?;
        let verify = self.verification.is_required();
        if verify {
            let ended = self.verification.release_stale_claim(&phone_number).await?;
            self.sessions.announce_ended(&ended).await;
        }
        // Checked before hashing, so a taken number costs no bcrypt time; the store's unique
        // rule still decides a race.
        if self.store.user_by_phone(&phone_number).await?.is_some() {
            return Err(StoreError::Conflict(Constraint::PhoneNumber).into());
        }
        if verify {
            // After the conflict check: a refused registration texts nobody, so it does not
            // use up the number's texts.
            self.limits.check_code_send(client, phone_number.as_str()).await?;
        }
        let password_hash = self.passwords.hash(&password).await?;
        let new_user = NewUser { phone_number, username, password_hash, phone_verified: !verify };
        let user = self.store.create_user(new_user).await?;
        tracing::info!(user = %user.id, verified = user.phone_verified, "user registered");
        if verify && let Err(error) = self.verification.send_code(&user).await {
            if let Err(cleanup) = self.verification.abandon_claim(&user).await {
                tracing::warn!(error = %cleanup, "cannot remove an account whose code was not sent");
            }
            return Err(error);
        }
        self.sign_in(user).await
    }

    /// Checks a phone number and password and signs the user in.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        client: ClientNetwork,
        phone_number: PhoneNumber,
        password: Password,
    ) -> AppResult<SignedIn> {
        let limits = &self.limits;
        limits.check_auth(client, phone_number.as_str()).await?;
        limits.check_login_backoff(client, phone_number.as_str()).await?;
        let credentials = self.store.credentials_by_phone(&phone_number).await?;
        let matched = match &credentials {
            Some(credentials) => {
                self.passwords.verify(&password, &credentials.password_hash).await?
            }
            None => self.passwords.verify_decoy(&password).await?,
        };
        match credentials {
            // A stale claim no longer holds the number: as if it did not exist.
            Some(credentials)
                if matched && !self.verification.is_stale_claim(&credentials.user) =>
            {
                limits.record_login_success(phone_number.as_str()).await;
                self.sign_in(credentials.user).await
            }
            _ => {
                limits.record_login_failure(client, phone_number.as_str()).await;
                Err(bad_credentials())
            }
        }
    }

    /// Changes the caller's password after checking the current one (a stolen token alone
    /// cannot take the account), and ends every other session: their tokens stop working and
    /// their websockets close with 4401. Wrong current passwords count towards the same
    /// backoff as failed logins. Returns how many sessions ended.
    #[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
    pub async fn change_password(
        &self,
        client: ClientNetwork,
        viewer: &Viewer,
        current: Password,
        new: Password,
    ) -> AppResult<usize> {
        self.limits.check_account_change(viewer.user_id.as_str()).await?;
        self.check_password(client, viewer, &current).await?;
        let hash = self.passwords.hash(&new).await?;
        self.store.set_password_hash(&viewer.user_id, hash).await?;
        tracing::info!("password changed");
        self.sessions.end_others(viewer).await
    }

    /// Deletes the caller's account after checking their password (see
    /// [`Store::delete_account`] for what is erased and what is kept), and closes every one of
    /// their websockets (4401). The phone number is free for a new account at once.
    #[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
    pub async fn delete_account(
        &self,
        client: ClientNetwork,
        viewer: &Viewer,
        password: Password,
    ) -> AppResult<()> {
        self.limits.check_account_change(viewer.user_id.as_str()).await?;
        self.check_password(client, viewer, &password).await?;
        let ended = self.store.delete_account(&viewer.user_id, chrono::Utc::now()).await?;
        self.sessions.announce_ended(&ended).await;
        tracing::info!("account deleted");
        Ok(())
    }

    /// Checks the caller's password; wrong ones count towards the failed-login backoff.
    async fn check_password(
        &self,
        client: ClientNetwork,
        viewer: &Viewer,
        password: &Password,
    ) -> AppResult<()> {
        let user =
            self.store.user_by_id(&viewer.user_id).await?.ok_or_else(AppError::unauthenticated)?;
        let phone = user.phone_number.as_str();
        self.limits.check_login_backoff(client, phone).await?;
        let credentials = self
            .store
            .credentials_by_phone(&user.phone_number)
            .await?
            .ok_or_else(AppError::unauthenticated)?;
        if !self.passwords.verify(password, &credentials.password_hash).await? {
            self.limits.record_login_failure(client, phone).await;
            return Err(AppError::BadUserInput("the password is not correct".into()));
        }
        Ok(())
    }

    async fn sign_in(&self, user: User) -> AppResult<SignedIn> {
        let started = self.sessions.start(&user).await?;
        Ok(SignedIn { token: started.token, user, session: started.session })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        client_address::ClientNetwork,
        sessions::tokens::TokenService,
        testing::{World, limits},
    };

    fn accounts(world: &World) -> Accounts {
        let tokens =
            TokenService::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let sessions = Sessions::new(world.store.clone(), world.bus.clone(), Arc::new(tokens));
        let limits = limits(|_| {});
        let verification = PhoneVerification::new(
            world.store.clone(),
            limits.clone(),
            None,
            b"key",
            &crate::config::Config::from_lookup(|_| None).unwrap().phone_verification,
        );
        Accounts::new(
            world.store.clone(),
            PasswordHasher::new(4, 1, 8),
            limits,
            sessions,
            verification,
        )
    }

    fn registration(phone: &str, password: &str) -> Registration {
        Registration {
            phone_number: PhoneNumber::parse(phone).unwrap(),
            username: Username::parse("alice").unwrap(),
            password: Password::parse(password).unwrap(),
        }
    }

    #[tokio::test]
    async fn one_account_per_number_and_login_answers_alike_for_unknown_and_wrong() {
        let world = World::new();
        let accounts = accounts(&world);
        let client = ClientNetwork::Unknown;
        let signed_up =
            accounts.register(client, registration("+12025550143", "correct-horse-battery")).await;
        let signed_up = signed_up.unwrap();
        let again =
            accounts.register(client, registration("+1 202 555 0143", "another-horse-1")).await;
        assert_eq!(again.unwrap_err().code(), "CONFLICT");

        let number = PhoneNumber::parse("+12025550143").unwrap();
        let login =
            accounts.login(client, number.clone(), Password::presented("correct-horse-battery"));
        let logged_in = login.await.unwrap();
        assert_eq!(logged_in.user, signed_up.user);
        assert_ne!(logged_in.session.id, signed_up.session.id, "a session per sign-in");

        let wrong =
            accounts.login(client, number, Password::presented("wrong-horse-battery")).await;
        let unknown = PhoneNumber::parse("+12025550199").unwrap();
        let nobody =
            accounts.login(client, unknown, Password::presented("correct-horse-battery")).await;
        let (wrong, nobody) = (wrong.unwrap_err(), nobody.unwrap_err());
        assert_eq!((wrong.code(), wrong.to_string()), (nobody.code(), nobody.to_string()));
        assert_eq!(wrong.code(), "UNAUTHENTICATED");
    }
}
