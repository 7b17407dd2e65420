//! What resolvers reach through the GraphQL context: the services (schema data, one per
//! domain) and the caller (request data).

use std::any::Any;

use async_graphql::Context;

use crate::{
    client_address::{ClientAddress, ClientNetwork},
    domain::Viewer,
    error::AppError,
    sessions::{RequestAuth, Sessions},
};

/// Resolver access to services and the caller.
pub(crate) trait ContextExt {
    /// The service of type `T` (`Accounts`, `Sessions`, `Messaging`, `Directory`).
    fn service<T: Any + Send + Sync>(&self) -> async_graphql::Result<&T>;

    /// The authenticated caller, or an `UNAUTHENTICATED` error.
    async fn viewer(&self) -> async_graphql::Result<Viewer>;

    /// Where the caller connects from, for the per-client sign-in limits (HTTP and websocket
    /// requests carry it; anything else shares the bucket of unknown addresses).
    fn client_network(&self) -> ClientNetwork;
}

impl ContextExt for Context<'_> {
    fn service<T: Any + Send + Sync>(&self) -> async_graphql::Result<&T> {
        self.data::<T>()
    }

    async fn viewer(&self) -> async_graphql::Result<Viewer> {
        let sessions = self.service::<Sessions>()?;
        let auth = self.data_opt::<RequestAuth>().ok_or_else(AppError::unauthenticated)?;
        Ok(auth.viewer(sessions).await?)
    }

    fn client_network(&self) -> ClientNetwork {
        self.data_opt::<ClientAddress>().copied().unwrap_or_default().network()
    }
}
