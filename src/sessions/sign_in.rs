//! Signing in: registering an account or logging in, each of which starts a session.

use chrono::Utc;

use crate::{
    client_address::ClientNetwork,
    domain::{NewSession, NewUser, Password, PhoneNumber, Session, User, Username},
    error::{AppError, AppResult},
    services::Services,
    store::{Constraint, StoreError},
};

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

/// Creates an account and signs it in.
#[tracing::instrument(skip_all)]
pub async fn register(
    services: &Services,
    client: ClientNetwork,
    phone_number: &str,
    username: &str,
    password: &str,
) -> AppResult<SignedIn> {
    let phone_number = PhoneNumber::parse(phone_number)?;
    let username = Username::parse(username)?;
    let password = Password::parse(password)?;
    services.rate_limits.check_auth(client, phone_number.as_str())?;
    if services.store.user_by_phone(&phone_number).await?.is_some() {
        return Err(StoreError::Conflict(Constraint::PhoneNumber).into());
    }
    let password_hash = services.passwords.hash(&password).await?;
    let user =
        services.store.create_user(NewUser { phone_number, username, password_hash }).await?;
    tracing::info!(user = %user.id, "user registered");
    start_session(services, user).await
}

/// Checks a phone number and password and signs the user in.
#[tracing::instrument(skip_all)]
pub async fn login(
    services: &Services,
    client: ClientNetwork,
    phone_number: &str,
    password: &str,
) -> AppResult<SignedIn> {
    let phone_number = PhoneNumber::parse(phone_number)?;
    let limits = &services.rate_limits;
    limits.check_auth(client, phone_number.as_str())?;
    limits.check_login_backoff(client, phone_number.as_str())?;
    let credentials = services.store.credentials_by_phone(&phone_number).await?;
    let matched = match &credentials {
        Some(credentials) => {
            services.passwords.verify(password, &credentials.password_hash).await?
        }
        None => services.passwords.verify_decoy(password).await?,
    };
    match credentials {
        Some(credentials) if matched => {
            limits.record_login_success(phone_number.as_str());
            start_session(services, credentials.user).await
        }
        _ => {
            limits.record_login_failure(client, phone_number.as_str());
            Err(bad_credentials())
        }
    }
}

/// Stores a new session for `user` and issues the token that names it.
async fn start_session(services: &Services, user: User) -> AppResult<SignedIn> {
    let now = Utc::now();
    let expires_at = services.tokens.expiry_from(now).map_err(AppError::internal)?;
    let session = services
        .store
        .create_session(NewSession { user_id: user.id.clone(), created_at: now, expires_at })
        .await?;
    let token =
        services.tokens.issue(&user.id, &session.id, expires_at).map_err(AppError::internal)?;
    Ok(SignedIn { token, user, session })
}
