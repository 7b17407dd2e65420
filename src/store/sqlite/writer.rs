//! Group commit: every write goes to one writer thread, which runs all the writes waiting at that
//! moment in a single transaction and commits them with one fsync.
//!
//! Durability is unchanged (no write is answered before the commit that contains it is on disk),
//! but under load one fsync serves many senders instead of one each. Each write runs inside its
//! own savepoint, so one failing write (a duplicate phone number, say) is rolled back alone and
//! the others in its batch still commit.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::mpsc::{self, Receiver, Sender},
    thread,
};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::wal::{self, RestartRequest};
use crate::store::{StoreError, StoreResult};

/// Most writes folded into one transaction; bounds how long the first writer waits for the
/// others' work.
const MAX_BATCH: usize = 256;

/// A write waiting for the writer thread.
trait Job: Send {
    /// Runs the write; an error means it must be rolled back.
    fn run(&mut self, connection: &Connection) -> StoreResult<()>;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Write<T, F> {
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Write<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
{
    fn run(&mut self, connection: &Connection) -> StoreResult<()> {
        let result = self.work.take().map_or_else(|| Err(not_run()), |work| work(connection));
        let outcome = result.as_ref().map(drop).map_err(StoreError::clone);
        self.result = Some(result);
        outcome
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let outcome = match commit {
            Ok(()) => self.result.unwrap_or_else(|| Err(not_run())),
            Err(error) => Err(error),
        };
        // The caller may have gone away (a cancelled request); the write stands regardless.
        let _ = self.reply.send(outcome);
    }
}

fn not_run() -> StoreError {
    StoreError::Internal("write was not run".into())
}

/// The handle callers use to queue writes.
#[derive(Clone)]
pub struct Writer {
    jobs: Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread on `connection`; it restarts the WAL between batches when
    /// `restart` asks (see [`wal`]). The thread ends when every handle is dropped.
    pub fn start(connection: Connection, restart: RestartRequest) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(connection, queue, restart))?;
        Ok(Writer { jobs })
    }

    /// Runs `work` in the next batch and returns its result once the batch is committed.
    pub async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Write { work: Some(work), result: None, reply });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("the database writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the database writer has stopped".into()))?
    }
}

fn run(connection: Connection, queue: Receiver<Box<dyn Job>>, restart: RestartRequest) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commit = commit_batch(&connection, &mut batch);
        if let Err(error) = &commit {
            tracing::error!(%error, writes = batch.len(), "a batch of writes failed to commit");
        }
        for job in batch {
            job.finish(commit.clone());
        }
        if restart.take() {
            wal::restart(&connection);
        }
    }
}

fn commit_batch(connection: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    // Cached statements: these run for every write, and parsing them each time showed up.
    let run = |statement: &str| {
        connection.prepare_cached(statement).and_then(|mut s| s.execute([])).map_err(super::sql)
    };
    run("BEGIN IMMEDIATE")?;
    let outcome = (|| {
        for job in batch.iter_mut() {
            run("SAVEPOINT job")?;
            // A panicking write must not take the writer thread (and every later write) down:
            // it is rolled back like a failed one, and its caller hears "write was not run".
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| job.run(connection)))
                .unwrap_or_else(|_| Err(not_run()));
            if let Err(error) = outcome {
                if connection.is_autocommit() {
                    // SQLite rolled the whole transaction back itself, as it may on a full
                    // disk or an I/O error: the batch fails, with this write's error.
                    return Err(error);
                }
                run("ROLLBACK TO job")?;
            }
            run("RELEASE job")?;
        }
        run("COMMIT")
    })();
    if outcome.is_err() {
        let _ = connection.execute_batch("ROLLBACK");
    }
    outcome.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_carries_on() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        let writer = Writer::start(connection, RestartRequest::default()).unwrap();
        let panicked = writer
            .write(|c| -> StoreResult<()> {
                c.execute("INSERT INTO t VALUES (1)", []).map_err(super::super::sql)?;
                panic!("a bug in a write");
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Internal(_))), "{panicked:?}");
        let count = writer
            .write(|c| {
                c.execute("INSERT INTO t VALUES (2)", []).map_err(super::super::sql)?;
                c.query_row("SELECT count(*), sum(n) FROM t", [], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(super::super::sql)
            })
            .await
            .unwrap();
        assert_eq!(count, (1, 2), "the panicking write was rolled back, the next one ran");
    }
}
