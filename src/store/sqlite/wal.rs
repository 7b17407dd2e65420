//! Keeping the write-ahead log small under sustained writes.
//!
//! A checkpoint copies committed pages from the WAL into the database file. It runs on a
//! thread of its own, `PASSIVE`, so it never blocks the writer (SQLite's automatic checkpoint
//! would run inside a commit on the writer thread and stall every write queued behind it; it is
//! off, `wal_autocheckpoint = 0`).
//!
//! Copying is not enough, though: SQLite writes the log from its beginning again only when a
//! write transaction *begins* while every frame has been copied. Under sustained writes the
//! writer has always committed more frames by the time a checkpoint finishes, so the log never
//! restarted and grew without bound (1.7 GB after ten seconds at saturation on the benchmark
//! machine, and each write that extended the file had the kernel zero new pages: a fifth of
//! the server's CPU). So when a checkpoint finds the log past [`Upkeep::restart_after_frames`],
//! it asks the writer thread to restart it between two batches ([`restart`]): with the bulk
//! just copied, that copies the few frames committed since and waits briefly for readers to
//! move on, and the next batch writes at the start of the file again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use rusqlite::Connection;

/// When the log is checked and by whom it is restarted.
#[derive(Debug, Clone, Copy)]
pub struct Upkeep {
    /// How often the background thread checkpoints.
    pub interval: Duration,
    /// Frames (pages) in the log past which the writer restarts it.
    pub restart_after_frames: i64,
}

impl Default for Upkeep {
    /// Every 250 ms; restart past 4,096 frames (16 MiB of 4 KiB pages).
    fn default() -> Self {
        Upkeep { interval: Duration::from_millis(250), restart_after_frames: 4096 }
    }
}

/// Largest log file kept after a restart; a larger one (grown while a long read held the log)
/// is truncated to this. Above what sustained saturation writes between two checks, so the
/// file is reused rather than shrunk and regrown.
pub const SIZE_LIMIT_BYTES: i64 = 256 * 1024 * 1024;

/// Set by the checkpoint thread when the log should be restarted; taken by the writer.
#[derive(Debug, Clone, Default)]
pub struct RestartRequest(Arc<AtomicBool>);

impl RestartRequest {
    fn ask(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a restart was asked for since the last call.
    pub fn take(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Relaxed)
    }
}

/// Checkpoints on a thread of its own every `upkeep.interval`, asking for a restart through
/// `restart` when the log has grown. The thread ends when the returned sender is dropped.
pub fn checkpoint_in_background(
    connection: Connection,
    upkeep: Upkeep,
    restart: RestartRequest,
) -> std::io::Result<mpsc::Sender<()>> {
    let (keep_running, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(upkeep.interval) {
            // The row is (busy, frames in the log, frames copied).
            match connection
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1))
            {
                Ok(frames) if frames >= upkeep.restart_after_frames => restart.ask(),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "WAL checkpoint failed; retrying"),
            }
        }
    })?;
    Ok(keep_running)
}

/// Longest the writer waits for readers to leave the log when restarting it. Reads are indexed
/// lookups of microseconds, so the first retry (after SQLite's 1 ms sleep) usually finds them
/// gone; a reader that takes longer (another process's long read) only postpones the restart
/// to the next request.
const RESTART_WAIT: Duration = Duration::from_millis(50);

/// Restarts the log from the writer's connection, between transactions: copies the frames
/// committed since the last checkpoint, waits for the readers still using the log (new ones
/// read the database file), and leaves the next write transaction to start at its beginning.
/// Waiting is what makes it certain: a passive copy from here was tried and, with readers
/// always mid-read, the log still grew without bound.
pub fn restart(connection: &Connection) {
    let restarted = connection.busy_timeout(RESTART_WAIT).and_then(|()| {
        connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get::<_, i64>(0))
    });
    match restarted {
        Ok(0) => {}
        Ok(_) => tracing::debug!("WAL restart postponed: a reader is still using the log"),
        Err(error) => tracing::warn!(%error, "WAL restart failed"),
    }
    if let Err(error) = connection.busy_timeout(super::BUSY_TIMEOUT) {
        tracing::warn!(%error, "could not restore the writer's busy timeout");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::OptionalExtension;

    use super::*;
    use crate::store::sqlite::writer::Writer;

    fn open(path: &Path) -> Connection {
        let connection = Connection::open(path).unwrap();
        // No fsync: this is about the log's size, not durability, and the test stays quick.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 PRAGMA synchronous = OFF;",
            )
            .unwrap();
        connection.busy_timeout(crate::store::sqlite::BUSY_TIMEOUT).unwrap();
        connection
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_stays_small_under_sustained_writes_and_reads() {
        const ROWS: i64 = 20_000;
        const ROW_BYTES: i64 = 500;
        const MOST_LOG_BYTES: u64 = 4 * 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer_connection = open(&path);
        writer_connection.execute_batch("CREATE TABLE t (n INTEGER, pad TEXT)").unwrap();
        let restart = RestartRequest::default();
        let upkeep = Upkeep { interval: Duration::from_millis(20), restart_after_frames: 256 };
        let _checkpointer = checkpoint_in_background(open(&path), upkeep, restart.clone()).unwrap();
        let writer = Writer::start(writer_connection, restart).unwrap();
        // A reader that is always reading, as the server's pool is under load (indexed
        // lookups, as the server's reads are).
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (stop, connection) = (stop.clone(), open(&path));
            std::thread::spawn(move || {
                let mut n: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n = (n + 7919) % ROWS;
                    let _: Option<i64> = connection
                        .query_row("SELECT n FROM t WHERE rowid = ?1", [n], |r| r.get(0))
                        .optional()
                        .unwrap();
                }
            })
        };
        // Four writers, so the next batch is always waiting: the writer never sees a moment
        // without writes, as under sustained load. 10 MB of rows in all: a log that never
        // restarts ends up larger than that.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for n in (w..ROWS).step_by(4) {
                        writer
                            .write(move |c| {
                                c.execute(
                                    "INSERT INTO t VALUES (?1, printf('%.*c', ?2, 'x'))",
                                    [n, ROW_BYTES],
                                )
                                .map_err(crate::store::sqlite::sql)
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let log = dir.path().join("t.db-wal");
        let mut largest = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            largest = largest.max(std::fs::metadata(&log).map_or(0, |m| m.len()));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        for w in writers {
            w.await.unwrap();
        }
        let written: i64 =
            open(&path).query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(written, ROWS);
        assert!(
            largest < MOST_LOG_BYTES,
            "the log grew to {largest} bytes while {} bytes were written",
            ROWS * ROW_BYTES
        );
    }
}
