//! Domain values: what a user, a session and a message are, and the rules their parts obey.
//!
//! This is the bottom layer: it imports nothing from the rest of the crate, and everything
//! else imports it. Client input becomes these types once, at the edge (the GraphQL inputs
//! convert with `TryFrom`); past that point a `PhoneNumber` or a `MessageContent` is proof that
//! the rules were checked. Values read back from the store are trusted (`from_stored`): the
//! store only ever holds values that were parsed on the way in. The same goes for the values
//! a multi-instance bus carries between servers (they `Deserialize` without re-checking): only
//! servers publish on it, and only values they had parsed or read from the store.

mod ids;
mod message;
mod paging;
mod password;
mod session;
mod user;
mod verification;

pub use ids::{MessageId, SessionId, UserId};
pub use message::{
    ChatEvent, ClientMessageId, Conversation, Message, MessageContent, MessageStatus, NewMessage,
};
pub use paging::{Cursor, PageSize};
pub use password::{Password, PasswordHash};
pub use session::{NewSession, Session, Viewer};
pub use user::{NewUser, PhoneNumber, User, UserCredentials, Username};
pub use verification::{PendingCode, VerificationCode};

/// A value a client sent that breaks one of the rules above; the text says which rule, for
/// the client (`BAD_USER_INPUT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);
