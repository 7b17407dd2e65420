//! The shared services every request uses, bundled into one cheap-to-clone handle.
//!
//! There are no globals: the app builder makes one [`Services`] and hands it to the GraphQL
//! schema as schema data and to the HTTP layer as router state, so each test server has its own.

use std::sync::Arc;

use crate::{
    bus::MessageBus,
    rate_limits::RateLimits,
    sessions::{passwords::PasswordHasher, tokens::TokenService},
    store::Store,
};

/// Handles to the store, the live bus, token signing and password hashing.
#[derive(Clone)]
pub struct Services {
    /// Durable storage; the source of truth for users, sessions and messages.
    pub store: Arc<dyn Store>,
    /// Wakes live subscriptions when a message is stored.
    pub bus: Arc<dyn MessageBus>,
    /// Issues and checks access tokens.
    pub tokens: Arc<TokenService>,
    /// bcrypt on dedicated low-priority threads.
    pub passwords: PasswordHasher,
    /// Rate limits and the failed-login backoff.
    pub rate_limits: Arc<RateLimits>,
}
