//! Users and the rules their registration details follow.

use chrono::{DateTime, Utc};

use super::{InvalidInput, PasswordHash, UserId};

/// A registered user, as stored (never carries the password hash). Serializable so a
/// multi-instance bus can carry it between servers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// Opaque, store-assigned id.
    pub id: UserId,
    /// The phone number the user registered with; unique across users.
    pub phone_number: PhoneNumber,
    /// Display name; not unique.
    pub username: Username,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// When their last open connection closed; `None` if none ever did.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Whether people they chat with may see whether they are online and when they were last
    /// seen (their privacy setting; on by default).
    pub shows_presence: bool,
    /// When the account was deleted. A deleted account is a tombstone: no phone number, no
    /// password, shown as [`User::DELETED_NAME`] in the history of those it wrote to.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Whether the user proved they own the phone number (always, when the server does not
    /// verify numbers). Until then they cannot send, be found by number, or receive.
    pub phone_verified: bool,
}

impl User {
    /// The name a deleted account is shown under.
    pub const DELETED_NAME: &str = "Deleted account";

    /// Whether the account was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}

/// A user about to be stored.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Normalised phone number; the store refuses a second user with the same one.
    pub phone_number: PhoneNumber,
    /// Display name.
    pub username: Username,
    /// bcrypt hash of the password; the password itself is never stored.
    pub password_hash: PasswordHash,
    /// Whether the number counts as proven from the start (phone verification is off).
    pub phone_verified: bool,
}

/// A user together with the password hash, for checking a login and nothing else.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    /// The user the hash belongs to.
    pub user: User,
    /// bcrypt hash to verify the presented password against.
    pub password_hash: PasswordHash,
}

/// A valid phone number, normalised to E.164 (`+12025550143`).
///
/// Parsed and validated with `phonenumber` (a port of Google's libphonenumber), so any common
/// formatting of one number is the same account, and numbers no country issues are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Longest input accepted before parsing, so parsing cost stays bounded.
    const MAX_INPUT_CHARS: usize = 32;

    /// Normalises `input`, or says what a valid phone number looks like.
    pub fn parse(input: &str) -> Result<Self, InvalidInput> {
        let invalid = || {
            InvalidInput(
                "phoneNumber must be a valid international phone number starting with + and the \
                 country code, for example +12025550143"
                    .into(),
            )
        };
        let trimmed = input.trim();
        let allowed = |c: char| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')');
        // libphonenumber reads letters as keypad digits (vanity numbers); an account id should not.
        if !trimmed.starts_with('+')
            || trimmed.chars().count() > Self::MAX_INPUT_CHARS
            || !trimmed[1..].chars().all(allowed)
        {
            return Err(invalid());
        }
        let number = phonenumber::parse(None, trimmed).map_err(|_| invalid())?;
        if !number.is_valid() {
            return Err(invalid());
        }
        Ok(PhoneNumber(number.format().mode(phonenumber::Mode::E164).to_string()))
    }

    /// A number read back from the store, which only holds parsed ones.
    pub fn from_stored(number: String) -> Self {
        PhoneNumber(number)
    }

    /// The normalised number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: 2 to 32 characters after trimming, no control, zero-width or
/// text-direction characters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// Shortest accepted name, in characters.
    pub const MIN_CHARS: usize = 2;
    /// Longest accepted name, in characters.
    pub const MAX_CHARS: usize = 32;

    /// Trims `input` and checks it, or says what a valid username looks like.
    pub fn parse(input: &str) -> Result<Self, InvalidInput> {
        let name = input.trim();
        let length = name.chars().count();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&length) {
            return Err(InvalidInput(format!(
                "username must be {} to {} characters long",
                Self::MIN_CHARS,
                Self::MAX_CHARS
            )));
        }
        if name.chars().any(|c| c.is_control() || is_invisible(c)) {
            return Err(InvalidInput(
                "username must not contain control, zero-width or text-direction characters".into(),
            ));
        }
        Ok(Username(name.to_string()))
    }

    /// A name read back from the store, which only holds parsed ones.
    pub fn from_stored(name: String) -> Self {
        Username(name)
    }

    /// The trimmed name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Zero-width and text-direction formatting characters: invisible in a chat list, and used to
/// make one name look like another (or to reverse the text that follows it).
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_are_never_printed() {
        let hash = "$2b$12$abcdefghijklmnopqrstuv";
        let user = User {
            id: UserId::new("u1"),
            phone_number: PhoneNumber::from_stored("+12025550143".into()),
            username: Username::from_stored("alice".into()),
            created_at: chrono::Utc::now(),
            last_seen_at: None,
            shows_presence: true,
            deleted_at: None,
            phone_verified: true,
        };
        let credentials = UserCredentials { user, password_hash: PasswordHash::new(hash.into()) };
        let printed = format!("{credentials:?}");
        assert!(!printed.contains(hash) && printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn phone_numbers_are_normalised() {
        let pretty = PhoneNumber::parse(" +1 (202) 555-0143 ").unwrap();
        let plain = PhoneNumber::parse("+12025550143").unwrap();
        assert_eq!(pretty, plain);
        assert_eq!(plain.as_str(), "+12025550143");
        let french = PhoneNumber::parse("+33 6 12 34 56 78").unwrap();
        assert_eq!(french.as_str(), "+33612345678");
    }

    #[test]
    fn malformed_phone_numbers_are_refused() {
        for bad in [
            "",
            "12025550143",
            "+",
            "+1234",
            "+1202555014312345",
            "+1202abc0143",
            "+0123456789",
            "+1 555 555 5555 5555 5555 5555 5555 5555",
            "+12025550143\u{0}",
        ] {
            let error = PhoneNumber::parse(bad).unwrap_err();
            assert!(error.0.starts_with("phoneNumber must be"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn usernames_are_trimmed_and_bounded() {
        assert_eq!(Username::parse("  alice ").unwrap().as_str(), "alice");
        assert!(Username::parse("a").is_err());
        assert!(Username::parse(&"x".repeat(33)).is_err());
        assert!(Username::parse("bad\u{0007}name").is_err());
        assert!(Username::parse("ad\u{200B}min").is_err(), "zero-width space");
        assert!(Username::parse("evil\u{202E}gpj.exe").is_err(), "right-to-left override");
        assert!(Username::parse("Zoë 🚀").is_ok());
    }
}
