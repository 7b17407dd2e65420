//! Password hashing with bcrypt, on threads of its own at low CPU priority.
//!
//! bcrypt is deliberately slow (around 250 ms at cost 12), so it never runs on the async worker
//! threads. It runs on a small pool of dedicated threads (`BCRYPT_CONCURRENCY`) whose scheduling
//! priority is lowered (nice 10, Linux), so a login storm queues there and only gets the CPU
//! that message delivery leaves idle.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::Instant,
};

use tokio::sync::{OnceCell, oneshot};

use crate::{
    domain::{Password, PasswordHash},
    error::AppError,
};

/// Nice value of the hashing threads: the kernel gives them about a tenth of the CPU time of a
/// normal thread when both want it.
const HASHING_NICENESS: i32 = 10;

type Work = Box<dyn FnOnce() + Send>;

/// Hashes and checks passwords at a fixed bcrypt cost.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    /// Queue of the hashing threads; they stop when the last hasher is dropped.
    work: mpsc::Sender<Work>,
    /// Jobs queued or running, and the most allowed: past it a sign-in is refused at once with
    /// `SERVICE_UNAVAILABLE` instead of waiting behind a flood for many seconds.
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    threads: usize,
    /// How long the last job took, in milliseconds, to say when to retry.
    last_job_millis: Arc<AtomicU64>,
    /// A hash of a random password, verified against when the phone number is unknown so that
    /// "no such account" takes as long as "wrong password" and accounts cannot be probed by
    /// timing. Made once, on first need.
    decoy: Arc<OnceCell<PasswordHash>>,
}

impl PasswordHasher {
    /// A hasher using bcrypt work factor `cost`, running at most `concurrency` hashes at once
    /// and holding at most `max_pending` (running and queued) before refusing more.
    pub fn new(cost: u32, concurrency: usize, max_pending: usize) -> Self {
        let (work, queue) = mpsc::channel::<Work>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..concurrency.max(1) {
            let queue = queue.clone();
            let spawned =
                std::thread::Builder::new().name(format!("bcrypt-{n}")).spawn(move || {
                    lower_priority();
                    loop {
                        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match next {
                            // A panic drops the job's reply (its caller gets an error); the
                            // thread stays, so the pool never shrinks.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a password hashing thread");
            }
        }
        PasswordHasher {
            cost,
            work,
            pending: Arc::default(),
            max_pending: max_pending.max(1),
            threads: concurrency.max(1),
            last_job_millis: Arc::default(),
            decoy: Arc::new(OnceCell::new()),
        }
    }

    /// Runs bcrypt work on a hashing thread.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let slot = PendingSlot::take(&self.pending, self.max_pending).ok_or_else(|| {
            let per_job = self.last_job_millis.load(Ordering::Relaxed).max(1);
            let queued = u64::try_from(self.max_pending / self.threads).unwrap_or(u64::MAX);
            AppError::Overloaded { retry_after_seconds: (per_job * queued).div_ceil(1000).max(1) }
        })?;
        let (reply, answer) = oneshot::channel();
        let last_job_millis = self.last_job_millis.clone();
        let job: Work = Box::new(move || {
            let _slot = slot;
            let started = Instant::now();
            let result = work();
            let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            last_job_millis.store(millis, Ordering::Relaxed);
            let _ = reply.send(result);
        });
        self.work.send(job).map_err(AppError::internal)?;
        answer.await.map_err(AppError::internal)
    }

    /// Hashes a validated password.
    pub async fn hash(&self, password: &Password) -> Result<PasswordHash, AppError> {
        let password = password.expose().to_string();
        let cost = self.cost;
        self.run(move || bcrypt::non_truncating_hash(password, cost))
            .await?
            .map(PasswordHash::new)
            .map_err(AppError::internal)
    }

    /// Whether `password` matches `hash`. Malformed input simply does not match.
    pub async fn verify(&self, password: &Password, hash: &PasswordHash) -> Result<bool, AppError> {
        let password = password.expose().to_string();
        let hash = hash.as_str().to_string();
        let matched = self.run(move || bcrypt::non_truncating_verify(password, &hash)).await?;
        Ok(matched.unwrap_or(false))
    }

    /// Spends the same effort as [`verify`](Self::verify) and always fails.
    pub async fn verify_decoy(&self, password: &Password) -> Result<bool, AppError> {
        let cost = self.cost;
        let decoy = self
            .decoy
            .get_or_try_init(|| async move {
                self.run(move || bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost))
                    .await?
                    .map(PasswordHash::new)
                    .map_err(AppError::internal)
            })
            .await?
            .clone();
        self.verify(password, &decoy).await?;
        Ok(false)
    }
}

/// A place in the hashing queue, given back when the job is done or dropped (even by a panic).
struct PendingSlot(Arc<AtomicUsize>);

impl PendingSlot {
    fn take(pending: &Arc<AtomicUsize>, max: usize) -> Option<PendingSlot> {
        pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| PendingSlot(pending.clone()))
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Lowers the calling thread's scheduling priority (on Linux the nice value is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; `gettid` names the calling thread only.
    unsafe {
        let thread = libc::gettid() as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, thread, HASHING_NICENESS) != 0 {
            tracing::debug!("cannot lower the priority of a password hashing thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_mismatches_do_not() {
        let hasher = PasswordHasher::new(4, 1, 8);
        let hash = hasher.hash(&Password::parse("correct horse").unwrap()).await.unwrap();
        assert!(hasher.verify(&Password::presented("correct horse"), &hash).await.unwrap());
        assert!(!hasher.verify(&Password::presented("wrong horse!"), &hash).await.unwrap());
        let garbage = PasswordHash::new("not a hash".into());
        assert!(!hasher.verify(&Password::presented("correct horse"), &garbage).await.unwrap());
        assert!(!hasher.verify_decoy(&Password::presented("correct horse")).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_with_a_retry_time() {
        let hasher = PasswordHasher::new(4, 1, 2);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let blockers: Vec<_> = (0..2)
            .map(|_| {
                let hasher = hasher.clone();
                let wait = wait.clone();
                tokio::spawn(async move { hasher.run(move || wait.lock().unwrap().recv()).await })
            })
            .collect();
        // Both places are taken (one running, one queued) once the counter says so.
        while hasher.pending.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        let refused =
            hasher.verify_decoy(&Password::presented("correct-horse-battery")).await.unwrap_err();
        assert!(
            matches!(refused, AppError::Overloaded { retry_after_seconds } if retry_after_seconds >= 1)
        );
        release.send(()).unwrap();
        release.send(()).unwrap();
        for blocker in blockers {
            blocker.await.unwrap().unwrap().unwrap();
        }
        // The hashing thread gives its place back just after it answers.
        let given_back = async {
            while hasher.pending.load(Ordering::Acquire) != 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), given_back)
            .await
            .expect("places are given back");
        assert!(!hasher.verify_decoy(&Password::presented("correct-horse-battery")).await.unwrap());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_at_low_priority() {
        let hasher = PasswordHasher::new(4, 1, 8);
        // SAFETY: getpriority only reads the calling thread's nice value.
        let nice = hasher
            .run(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) })
            .await
            .unwrap();
        assert_eq!(nice, HASHING_NICENESS);
    }
}
