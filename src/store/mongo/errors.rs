//! Driver errors in the store's terms: duplicate keys are conflicts, anything that means "no
//! usable server right now" is [`StoreError::Unavailable`] (the client sees
//! `SERVICE_UNAVAILABLE` and may retry), the rest is internal.

use mongodb::error::{Error, ErrorKind, WriteFailure};

use crate::store::StoreError;

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11000;

/// Server error codes that mean the deployment is (briefly) unable to serve: a primary
/// stepping down or shutting down, a host unreachable, a network timeout.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Whether `error` is a unique-index violation.
pub fn is_duplicate_key(error: &Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(insert) => {
            insert.write_errors.iter().flatten().any(|write| write.code == DUPLICATE_KEY)
        }
        _ => false,
    }
}

/// MongoDB's NamespaceNotFound: the collection or database does not exist.
const NAMESPACE_NOT_FOUND: i32 = 26;

/// Whether `error` says the collection does not exist.
pub fn is_namespace_not_found(error: &Error) -> bool {
    matches!(error.kind.as_ref(), ErrorKind::Command(command) if command.code == NAMESPACE_NOT_FOUND)
}

/// Classifies a driver error that the caller did not handle itself.
pub fn store_error(error: Error) -> StoreError {
    let unavailable = match error.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => true,
        // The write reached the primary but not a majority in time: the client may retry
        // (with its clientMessageId, a retried send returns the original message).
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::Command(command) => TRANSIENT_CODES.contains(&command.code),
        _ => false,
    } || error.contains_label("RetryableWriteError")
        || error.contains_label("TransientTransactionError");
    if unavailable {
        StoreError::Unavailable(error.to_string())
    } else {
        StoreError::Internal(error.to_string())
    }
}
