//! Users: finding people to chat with, and who may see whose phone number.

use std::sync::Arc;

use crate::{
    domain::{PhoneNumber, User, UserId, Viewer},
    error::{AppError, AppResult},
    rate_limits::RateLimits,
    store::Store,
};

/// Looks users up, within the lookup limits and privacy rules.
#[derive(Clone)]
pub struct Directory {
    /// Where users are kept.
    store: Arc<dyn Store>,
    /// The per-caller limit on phone number lookups.
    limits: Arc<RateLimits>,
}

impl Directory {
    /// The service over `store`.
    pub fn new(store: Arc<dyn Store>, limits: Arc<RateLimits>) -> Self {
        Directory { store, limits }
    }

    /// The caller's own account (gone if it was deleted while the token lived).
    pub async fn me(&self, viewer: &Viewer) -> AppResult<User> {
        self.store.user_by_id(&viewer.user_id).await?.ok_or_else(AppError::unauthenticated)
    }

    /// The user with this id, if any.
    pub async fn by_id(&self, id: &UserId) -> AppResult<Option<User>> {
        Ok(self.store.user_by_id(id).await?)
    }

    /// The users with these ids that exist, in one store read (for batching).
    pub async fn by_ids(&self, ids: &[UserId]) -> AppResult<Vec<User>> {
        Ok(self.store.users_by_ids(ids).await?)
    }

    /// The user with this phone number, if any. Limited per caller (`RATE_LIMITED`), so the
    /// directory cannot be scraped by trying numbers.
    pub async fn by_phone(&self, viewer: &Viewer, phone: &PhoneNumber) -> AppResult<Option<User>> {
        self.limits.check_lookup(viewer.user_id.as_str())?;
        Ok(self.store.user_by_phone(phone).await?)
    }

    /// Whether `viewer` may see whether `user` is online and when they were last seen: their
    /// own, or that of someone they share a conversation with who shows their presence.
    pub async fn may_see_presence(&self, viewer: &Viewer, user: &User) -> AppResult<bool> {
        if viewer.user_id == user.id {
            return Ok(true);
        }
        Ok(user.shows_presence && self.may_see_phone_number(viewer, &user.id).await?)
    }

    /// Whether `viewer` may see `user`'s phone number: their own, or that of someone they share
    /// a conversation with (have sent a message to or received one from).
    pub async fn may_see_phone_number(&self, viewer: &Viewer, user: &UserId) -> AppResult<bool> {
        if &viewer.user_id == user {
            return Ok(true);
        }
        let shared = self.store.conversation(&viewer.user_id, user, None, 1).await?;
        Ok(!shared.is_empty())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::testing::{World, limits};

    #[tokio::test]
    async fn phone_numbers_show_to_their_owner_and_conversation_partners_only() {
        let world = World::new();
        let [alice, bob, carol] = [
            world.user("+12025550143").await,
            world.user("+12025550144").await,
            world.user("+12025550145").await,
        ];
        let directory = Directory::new(world.store.clone(), limits(|_| {}));
        let as_bob = world.viewer(&bob).await;
        assert!(directory.may_see_phone_number(&as_bob, &bob.id).await.unwrap());
        assert!(!directory.may_see_phone_number(&as_bob, &alice.id).await.unwrap());
        world.message(&alice, &bob, "hi").await;
        assert!(directory.may_see_phone_number(&as_bob, &alice.id).await.unwrap());
        assert!(!directory.may_see_phone_number(&as_bob, &carol.id).await.unwrap());
    }

    #[tokio::test]
    async fn phone_number_lookups_are_limited_per_caller() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let directory =
            Directory::new(world.store.clone(), limits(|l| l.lookups_per_minute_per_user = 2));
        let (as_alice, as_bob) = (world.viewer(&alice).await, world.viewer(&bob).await);
        for _ in 0..2 {
            let found = directory.by_phone(&as_alice, &bob.phone_number).await.unwrap();
            assert_eq!(found.map(|user| user.id), Some(bob.id.clone()));
        }
        let refused = directory.by_phone(&as_alice, &bob.phone_number).await.unwrap_err();
        assert_eq!(refused.code(), "RATE_LIMITED");
        assert!(directory.by_phone(&as_bob, &alice.phone_number).await.is_ok(), "per caller");
    }
}
