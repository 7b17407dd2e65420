//! Phone verification codes: what a user types, and what the store keeps of it.

use std::fmt;

use chrono::{DateTime, Utc};

use super::InvalidInput;

/// A one-time code as sent to a phone and typed back: [`VerificationCode::DIGITS`] decimal
/// digits. Never printed by `Debug`, so it cannot end up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct VerificationCode(String);

impl VerificationCode {
    /// How many digits a code has: a million possibilities, of which a guesser gets
    /// [`PendingCode::MAX_ATTEMPTS`] tries per code.
    pub const DIGITS: usize = 6;

    /// A fresh code from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        // Rejection sampling keeps every code equally likely (4_294_000_000 is the largest
        // multiple of a million that fits in a u32).
        loop {
            let value = getrandom::u32()?;
            if value < 4_294_000_000 {
                return Ok(VerificationCode(format!("{:06}", value % 1_000_000)));
            }
        }
    }

    /// Checks what a user typed: the digits, with any spaces or dashes around or between them
    /// ignored (`123 456` and `123-456` are common ways to type a code).
    pub fn parse(input: &str) -> Result<Self, InvalidInput> {
        let invalid = || {
            InvalidInput(format!("code must be the {}-digit code sent to your phone", Self::DIGITS))
        };
        // Bounded before looking at it, so a huge input costs nothing.
        if input.len() > 32 {
            return Err(invalid());
        }
        let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.len() != Self::DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        Ok(VerificationCode(digits))
    }

    /// The digits, to send to the phone (and nowhere else).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VerificationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerificationCode([redacted])")
    }
}

/// The code a user has been sent and not yet used, as the store keeps it: only a keyed hash,
/// so reading the store does not reveal a code that still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCode {
    /// Keyed hash of the code (hex).
    pub code_hash: String,
    /// When the code stops being accepted.
    pub expires_at: DateTime<Utc>,
    /// Tries made against this code so far, right or wrong.
    pub attempts: u32,
}

impl PendingCode {
    /// Tries allowed per code; after that the code is dead and a new one must be requested.
    pub const MAX_ATTEMPTS: u32 = 5;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_are_six_digits_and_vary() {
        let codes: Vec<_> = (0..50).map(|_| VerificationCode::generate().unwrap()).collect();
        for code in &codes {
            assert_eq!(VerificationCode::parse(code.expose()).unwrap(), *code);
        }
        let distinct: std::collections::HashSet<_> = codes.iter().map(|c| c.expose()).collect();
        assert!(distinct.len() > 40, "50 random codes should rarely repeat: {distinct:?}");
    }

    #[test]
    fn typed_codes_forgive_spacing_and_nothing_else() {
        assert_eq!(VerificationCode::parse(" 123 456 ").unwrap().expose(), "123456");
        assert_eq!(VerificationCode::parse("123-456").unwrap().expose(), "123456");
        for bad in ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", &"1".repeat(10_000)] {
            assert!(VerificationCode::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn codes_never_print() {
        let code = VerificationCode::parse("123456").unwrap();
        assert!(!format!("{code:?}").contains("123456"));
    }
}
