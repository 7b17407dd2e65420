//! Passwords and their hashes; neither ever prints.

use super::InvalidInput;

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

    /// Checks a new password against the length rules and the list of common passwords.
    pub fn parse(input: &str) -> Result<Self, InvalidInput> {
        if input.chars().count() < Self::MIN_CHARS {
            return Err(InvalidInput(format!(
                "password must be at least {} characters long",
                Self::MIN_CHARS
            )));
        }
        if input.len() > Self::MAX_BYTES {
            return Err(InvalidInput(format!(
                "password must be at most {} bytes long (bcrypt would ignore the rest)",
                Self::MAX_BYTES
            )));
        }
        if is_common_password(input) {
            return Err(InvalidInput(
                "this password is one of the most common ones and easy to guess; choose another"
                    .into(),
            ));
        }
        Ok(Password(input.to_string()))
    }

    /// A password presented at login: checked against the stored hash, not against the rules
    /// (they may have changed since the account was made).
    pub fn presented(input: &str) -> Self {
        Password(input.to_string())
    }

    /// The password text, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
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

/// The most common passwords of at least [`Password::MIN_CHARS`] characters, lower-cased: the
/// 20,000-password list Django's `CommonPasswordValidator` ships
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
    fn passwords_are_bounded_in_bytes() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse("long enough").is_ok());
        assert!(Password::parse(&"a".repeat(71)).is_ok());
        assert!(Password::parse(&"a".repeat(72)).is_err());
        // 24 three-byte characters: only 24 characters, but 72 bytes.
        assert!(Password::parse(&"€".repeat(24)).is_err());
        assert_eq!(format!("{:?}", Password::parse("long enough").unwrap()), "Password(***)");
        assert_eq!(format!("{:?}", Password::presented("hunter2")), "Password(***)");
    }
}
