//! Password hashing with bcrypt, kept off the async worker threads.
//!
//! bcrypt is deliberately slow (around 250 ms at cost 12), so every hash and verify runs on the
//! blocking pool; running it inline would stall every message delivery sharing that worker.

use std::sync::Arc;

use tokio::sync::{OnceCell, Semaphore};

use crate::{error::AppError, users::Password};

/// Hashes and checks passwords at a fixed bcrypt cost.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    /// Bounds the hashes running at once, so a login storm queues here instead of occupying
    /// every core that message delivery needs.
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the phone number is unknown so that
    /// "no such account" takes as long as "wrong password" and accounts cannot be probed by
    /// timing. Made once, on first need.
    decoy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    /// A hasher using bcrypt work factor `cost`, running at most `concurrency` hashes at once.
    pub fn new(cost: u32, concurrency: usize) -> Self {
        PasswordHasher {
            cost,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            decoy: Arc::new(OnceCell::new()),
        }
    }

    /// Runs bcrypt work on the blocking pool once a permit is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let _permit = self.permits.acquire().await.map_err(AppError::internal)?;
        tokio::task::spawn_blocking(work).await.map_err(AppError::internal)
    }

    /// Hashes a validated password.
    pub async fn hash(&self, password: &Password) -> Result<String, AppError> {
        let password = password.expose().to_string();
        let cost = self.cost;
        self.run(move || bcrypt::non_truncating_hash(password, cost))
            .await?
            .map_err(AppError::internal)
    }

    /// Whether `password` matches `hash`. Malformed input simply does not match.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, AppError> {
        let password = password.to_string();
        let hash = hash.to_string();
        let matched = self.run(move || bcrypt::non_truncating_verify(password, &hash)).await?;
        Ok(matched.unwrap_or(false))
    }

    /// Spends the same effort as [`verify`](Self::verify) and always fails.
    pub async fn verify_decoy(&self, password: &str) -> Result<bool, AppError> {
        let cost = self.cost;
        let decoy = self
            .decoy
            .get_or_try_init(|| async move {
                self.run(move || bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost))
                    .await?
                    .map_err(AppError::internal)
            })
            .await?
            .clone();
        self.verify(password, &decoy).await?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_mismatches_do_not() {
        let hasher = PasswordHasher::new(4, 1);
        let hash = hasher.hash(&Password::parse("correct horse").unwrap()).await.unwrap();
        assert!(hasher.verify("correct horse", &hash).await.unwrap());
        assert!(!hasher.verify("wrong horse!", &hash).await.unwrap());
        assert!(!hasher.verify("correct horse", "not a hash").await.unwrap());
        assert!(!hasher.verify_decoy("correct horse").await.unwrap());
    }
}
