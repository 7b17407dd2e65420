//! Typed ids: a user id cannot be passed where a session id is expected.
//!
//! Ids are opaque strings assigned by the store. Any string is a well-formed id (a client may
//! send one that names nothing, and the store answers "not found"), so making one never fails.
//!
//! An id is shared text (`Arc<str>`): a cloned id points at the same bytes. An idle connection
//! keeps its user's and session's ids in several places (its caller, its session watch, its
//! presence, its delivery), and a delivered message's ids are copied into every event.

/// Declares an opaque id newtype.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// Wraps an id the store assigned or a client sent.
            pub fn new(id: impl Into<std::sync::Arc<str>>) -> Self {
                $name(id.into())
            }

            /// The id as text, for the store, logs and clients.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0.to_string()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A user's id.
    UserId
);
id_type!(
    /// A session's id, carried in the access token's `sid` claim.
    SessionId
);
id_type!(
    /// A message's id.
    MessageId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_text() {
        let id = UserId::new("u-1");
        assert_eq!(id.as_str(), "u-1");
        assert_eq!(id.to_string(), "u-1");
        assert_eq!(id.clone().into_string(), "u-1");
        assert_ne!(UserId::new("a"), UserId::new("b"));
    }
}
