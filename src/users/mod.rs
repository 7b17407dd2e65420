//! Users: who can chat, and the rules their registration details must follow.
//!
//! Input is parsed into newtypes ([`PhoneNumber`], [`Username`], [`Password`]) at the edge, so
//! code further in never sees an unchecked value.

pub mod graphql;

use chrono::{DateTime, Utc};

use crate::error::AppError;

/// A registered user, as stored (never carries the password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Opaque, store-assigned id.
    pub id: String,
    /// The normalised phone number the user registered with; unique across users.
    pub phone_number: String,
    /// Display name; not unique.
    pub username: String,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
}

/// A user about to be stored.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Normalised phone number; the store refuses a second user with the same one.
    pub phone_number: PhoneNumber,
    /// Validated display name.
    pub username: Username,
    /// bcrypt hash of the password; the password itself is never stored.
    pub password_hash: PasswordHash,
}

/// A user together with the password hash, for checking a login and nothing else.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    /// The user the hash belongs to.
    pub user: User,
    /// bcrypt hash to verify the presented password against.
    pub password_hash: PasswordHash,
}

/// A bcrypt password hash. Not the password, but enough to guess it offline, so it never
/// prints: `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a hash made by bcrypt (or read back from the store).
    pub fn new(hash: String) -> Self {
        PasswordHash(hash)
    }

    /// The hash, for storing and verifying.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash([redacted])")
    }
}

/// A valid phone number, normalised to E.164 (`+12025550143`).
///
/// Parsed and validated with `phonenumber` (a port of Google's libphonenumber), so any common
/// formatting of one number is the same account, and numbers no country issues are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Longest input accepted before parsing, so parsing cost stays bounded.
    const MAX_INPUT_CHARS: usize = 32;

    /// Normalises `input`, or says what a valid phone number looks like.
    pub fn parse(input: &str) -> Result<Self, AppError> {
        let invalid = || {
            AppError::BadUserInput(
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

    /// The normalised number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: 2 to 32 characters after trimming, no control, zero-width or
/// text-direction characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Shortest accepted name, in characters.
    pub const MIN_CHARS: usize = 2;
    /// Longest accepted name, in characters.
    pub const MAX_CHARS: usize = 32;

    /// Trims `input` and checks it, or says what a valid username looks like.
    pub fn parse(input: &str) -> Result<Self, AppError> {
        let name = input.trim();
        let length = name.chars().count();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&length) {
            return Err(AppError::BadUserInput(format!(
                "username must be {} to {} characters long",
                Self::MIN_CHARS,
                Self::MAX_CHARS
            )));
        }
        if name.chars().any(|c| c.is_control() || is_invisible(c)) {
            return Err(AppError::BadUserInput(
                "username must not contain control, zero-width or text-direction characters".into(),
            ));
        }
        Ok(Username(name.to_string()))
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

/// A password that bcrypt can hash without losing any of it.
///
/// bcrypt only reads the first 72 bytes (71 plus a terminator in many implementations), so a
/// longer password would silently be cut; it is refused instead.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Shortest accepted password, in characters.
    pub const MIN_CHARS: usize = 8;
    /// Longest accepted password, in UTF-8 bytes.
    pub const MAX_BYTES: usize = 71;

    /// Checks a new password against the length rules.
    pub fn parse(input: &str) -> Result<Self, AppError> {
        if input.chars().count() < Self::MIN_CHARS {
            return Err(AppError::BadUserInput(format!(
                "password must be at least {} characters long",
                Self::MIN_CHARS
            )));
        }
        if input.len() > Self::MAX_BYTES {
            return Err(AppError::BadUserInput(format!(
                "password must be at most {} bytes long (bcrypt would ignore the rest)",
                Self::MAX_BYTES
            )));
        }
        if is_common_password(input) {
            return Err(AppError::BadUserInput(
                "this password is one of the most common ones and easy to guess; choose another"
                    .into(),
            ));
        }
        Ok(Password(input.to_string()))
    }

    /// The password text, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The most common passwords of at least [`Password::MIN_CHARS`] characters, lower-cased: the 20,000-password list Django's `CommonPasswordValidator` ships
/// (`django/contrib/auth/common-passwords.txt.gz`, Django 5.2, BSD-3-Clause; compiled by Royce
/// Williams from breach corpora), keeping the 8,354 entries long enough to pass the length rule.
/// NIST SP 800-63B requires refusing passwords found in such lists.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

/// Whether `password`, in any letter case, is on [`COMMON_PASSWORDS`]. A scan of the list
/// takes microseconds, next to the quarter second of bcrypt every registration spends anyway.
fn is_common_password(password: &str) -> bool {
    let lowered = password.to_lowercase();
    COMMON_PASSWORDS.lines().any(|common| common == lowered)
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_passwords_are_refused_in_any_case() {
        for common in ["password123", "PASSWORD1", "12345678", "iloveyou"] {
            let error = Password::parse(common).unwrap_err();
            assert!(error.to_string().contains("common"), "{common}: {error}");
        }
        assert!(Password::parse("correct-horse-battery").is_ok());
        assert!(COMMON_PASSWORDS.lines().all(|line| line.chars().count() >= Password::MIN_CHARS));
        assert!(COMMON_PASSWORDS.lines().count() > 8000);
    }

    #[test]
    fn password_hashes_are_never_printed() {
        let hash = "$2b$12$abcdefghijklmnopqrstuv";
        let user = User {
            id: "u1".into(),
            phone_number: "+12025550143".into(),
            username: "alice".into(),
            created_at: chrono::Utc::now(),
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
            assert_eq!(error.code(), "BAD_USER_INPUT", "{bad:?}");
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

    #[test]
    fn passwords_are_bounded_in_bytes() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse("long enough").is_ok());
        assert!(Password::parse(&"a".repeat(71)).is_ok());
        assert!(Password::parse(&"a".repeat(72)).is_err());
        // 24 three-byte characters: only 24 characters, but 72 bytes.
        assert!(Password::parse(&"€".repeat(24)).is_err());
        assert_eq!(format!("{:?}", Password::parse("long enough").unwrap()), "Password(***)");
    }
}
