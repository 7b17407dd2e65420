//! Users: finding people to chat with, and who may see whose phone number.

use std::sync::Arc;

use crate::{
    bus::MessageBus,
    domain::{ChatEvent, PhoneNumber, User, UserId, Username, Viewer},
    error::{AppError, AppResult},
    rate_limits::RateLimits,
    store::Store,
};

/// How many of a user's most recent conversation partners hear about a profile change; the
/// rest see it when they next load the user.
pub const PROFILE_FANOUT: usize = 200;

/// Looks users up, within the lookup limits and privacy rules.
#[derive(Clone)]
pub struct Directory {
    /// Where users are kept.
    store: Arc<dyn Store>,
    /// The per-caller limits on phone number lookups and account changes.
    limits: Arc<RateLimits>,
    /// Tells conversation partners about profile changes.
    bus: Arc<dyn MessageBus>,
}

impl Directory {
    /// The service over `store`.
    pub fn new(store: Arc<dyn Store>, limits: Arc<RateLimits>, bus: Arc<dyn MessageBus>) -> Self {
        Directory { store, limits, bus }
    }

    /// Changes the caller's display name and tells the open connections of the people they
    /// chat with (a `ProfileChanged` on their `chatEvents`).
    #[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
    pub async fn update_profile(&self, viewer: &Viewer, username: Username) -> AppResult<User> {
        self.limits.check_account_change(viewer.user_id.as_str()).await?;
        let user = self
            .store
            .set_username(&viewer.user_id, username)
            .await?
            .ok_or_else(AppError::unauthenticated)?;
        let partners = self.store.conversations(&viewer.user_id, None, PROFILE_FANOUT).await?;
        let event = Arc::new(ChatEvent::ProfileChanged(user.clone()));
        for partner in partners {
            self.bus.publish_event(&partner.with, event.clone()).await;
        }
        Ok(user)
    }

    /// The caller's own account (gone if it was deleted while the token lived).
    pub async fn me(&self, viewer: &Viewer) -> AppResult<User> {
        self.store.user_by_id(&viewer.user_id).await?.ok_or_else(AppError::unauthenticated)
    }

    /// The user with this id as `viewer` may see them: `None` if there is none, or if they
    /// block the viewer (who then cannot tell a block from a deleted account).
    pub async fn by_id(&self, viewer: &Viewer, id: &UserId) -> AppResult<Option<User>> {
        let Some(user) = self.store.user_by_id(id).await? else { return Ok(None) };
        if user.is_deleted() || self.store.blocks(&user.id, &viewer.user_id).await? {
            return Ok(None);
        }
        Ok(Some(user))
    }

    /// Blocks `id` for the caller: their messages to the caller are refused as if the caller's
    /// account did not exist, they cannot find the caller by phone number or id, and they no
    /// longer see the caller's presence or typing. Blocking twice is harmless.
    #[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
    pub async fn block(&self, viewer: &Viewer, id: &UserId) -> AppResult<()> {
        self.limits.check_account_change(viewer.user_id.as_str()).await?;
        if id == &viewer.user_id {
            return Err(AppError::BadUserInput("you cannot block yourself".into()));
        }
        if self.store.user_by_id(id).await?.is_none_or(|user| user.is_deleted()) {
            return Err(AppError::NotFound("user not found".into()));
        }
        Ok(self.store.block(&viewer.user_id, id, chrono::Utc::now()).await?)
    }

    /// Lifts the caller's block of `id`; returns whether there was one.
    pub async fn unblock(&self, viewer: &Viewer, id: &UserId) -> AppResult<bool> {
        self.limits.check_account_change(viewer.user_id.as_str()).await?;
        Ok(self.store.unblock(&viewer.user_id, id).await?)
    }

    /// Everyone the caller blocks, most recently blocked first.
    pub async fn blocked(&self, viewer: &Viewer) -> AppResult<Vec<User>> {
        let ids = self.store.blocked_users(&viewer.user_id).await?;
        let mut users = self.store.users_by_ids(&ids).await?;
        users.sort_by_key(|user| ids.iter().position(|id| id == &user.id));
        Ok(users)
    }

    /// The users with these ids that exist, in one store read (for batching).
    pub async fn by_ids(&self, ids: &[UserId]) -> AppResult<Vec<User>> {
        Ok(self.store.users_by_ids(ids).await?)
    }

    /// The user with this phone number, if any who has verified it and does not block the
    /// caller. Limited per caller (`RATE_LIMITED`), so the directory cannot be scraped by trying
    /// numbers; refused (`PHONE_NOT_VERIFIED`) to a caller who has not verified their own.
    pub async fn by_phone(&self, viewer: &Viewer, phone: &PhoneNumber) -> AppResult<Option<User>> {
        self.limits.check_lookup(viewer.user_id.as_str()).await?;
        // An account that has not proven its own number may not look up others' (throwaway
        // sign-ups would otherwise be a way to test which numbers are registered).
        if self.store.user_by_id(&viewer.user_id).await?.is_some_and(|me| !me.phone_verified) {
            return Err(AppError::PhoneNotVerified);
        }
        let Some(user) = self.store.user_by_phone(phone).await? else { return Ok(None) };
        if !user.phone_verified || self.store.blocks(&user.id, &viewer.user_id).await? {
            return Ok(None);
        }
        Ok(Some(user))
    }

    /// Whether `viewer` may see whether `user` is online and when they were last seen: their
    /// own, or that of someone they share a conversation with who shows their presence.
    pub async fn may_see_presence(&self, viewer: &Viewer, user: &User) -> AppResult<bool> {
        if viewer.user_id == user.id {
            return Ok(true);
        }
        Ok(user.shows_presence
            && !user.is_deleted()
            && !self.store.blocks(&user.id, &viewer.user_id).await?
            && self.may_see_phone_number(viewer, &user.id).await?)
    }

    /// Whether `viewer` may see `user`'s phone number: their own, or that of someone they share
    /// a conversation with (have sent a message to or received one from).
    pub async fn may_see_phone_number(&self, viewer: &Viewer, user: &UserId) -> AppResult<bool> {
        // (A deleted account has no number to see: the schema shows null for it.)
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
        let directory = Directory::new(world.store.clone(), limits(|_| {}), world.bus.clone());
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
        let limits = limits(|l| l.lookups_per_minute_per_user = 2);
        let directory = Directory::new(world.store.clone(), limits, world.bus.clone());
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
