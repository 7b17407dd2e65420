//! The data directory holds phone numbers, password hashes, messages and the token secret, so
//! only the server's own user may read it: the directory is created `0700` and the database
//! `0600` (SQLite gives its `-wal` and `-shm` files the database's permissions), and startup
//! warns about an existing directory or file that others can read.

use std::{io, path::Path};

/// Creates `dir` (and its parents) if missing, private to the owner; warns if it exists and is
/// readable by others.
pub fn prepare(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        warn_if_exposed(dir);
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates an empty file only the owner can read, unless it exists already.
pub fn create_private_file(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// Proof that this process may use the data directory's embedded store: alone, or (with
/// Redis carrying live events between them) together with other processes that share it. The
/// lock is released when this is dropped (or the process dies, however it dies).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// Name of the lock file inside the data directory.
const LOCK_FILE: &str = "chatapp.lock";

/// Takes the data directory's lock, or says that another process holds it in a way that
/// excludes this one. `shared` processes (those with `REDIS_URL`, whose live events reach each
/// other) may run together; a process without it must be alone, since it would deliver live
/// only the messages sent through it.
pub fn lock(dir: &Path, shared: bool) -> io::Result<Result<DirLock, String>> {
    let path = dir.join(LOCK_FILE);
    create_private_file(&path)?;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
    let taken = if shared { file.try_lock_shared() } else { file.try_lock() };
    match taken {
        Ok(()) => Ok(Ok(DirLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Err(format!(
            "another chatapp process is already using the data directory {} (it holds {}); stop it, give this one its own DATA_DIR, or set the same REDIS_URL on every process that shares it",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(error)) => Err(error),
    }
}

/// Logs a warning when `path` exists and its group or others have any access to it.
pub fn warn_if_exposed(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "readable by other users of this machine; it holds phone numbers, password hashes and messages: chmod go-rwx"
                );
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_directories_and_files_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("chat.db");
        create_private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        create_private_file(&file).unwrap();
    }

    #[test]
    fn a_second_lock_on_one_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path(), false).unwrap().unwrap();
        let refused = lock(dir.path(), false).unwrap().unwrap_err();
        assert!(refused.contains("another chatapp process"), "{refused}");
        assert!(lock(dir.path(), true).unwrap().is_err(), "nor may a sharing one join it");
        drop(first);
        assert!(lock(dir.path(), false).unwrap().is_ok());
    }

    #[test]
    fn sharing_processes_lock_together_and_keep_a_lone_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path(), true).unwrap().unwrap();
        let second = lock(dir.path(), true).unwrap().unwrap();
        let refused = lock(dir.path(), false).unwrap().unwrap_err();
        assert!(refused.contains("REDIS_URL"), "{refused}");
        drop((first, second));
        assert!(lock(dir.path(), false).unwrap().is_ok());
    }
}
