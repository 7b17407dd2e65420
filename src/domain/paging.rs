//! Paging through history: page sizes and opaque cursors.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::InvalidInput;

/// How many messages one history page holds: 1 to [`PageSize::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(usize);

impl PageSize {
    /// Largest page.
    pub const MAX: usize = 100;
    /// Page size when the client does not say.
    pub const DEFAULT: usize = 50;

    /// The size a client asked for in `argument` (`last`, `first`), or the default.
    pub fn parse(requested: Option<i32>, argument: &str) -> Result<Self, InvalidInput> {
        match requested {
            None => Ok(PageSize(Self::DEFAULT)),
            Some(n) if n >= 1 && n as usize <= Self::MAX => Ok(PageSize(n as usize)),
            Some(_) => Err(InvalidInput(format!("{argument} must be between 1 and {}", Self::MAX))),
        }
    }

    /// The number of messages.
    pub fn get(self) -> usize {
        self.0
    }
}

/// A position in history: the `seq` of a message. Clients see it as an opaque string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(i64);

impl Cursor {
    const PREFIX: &str = "msg:";

    /// The cursor of the message with this `seq`.
    pub fn at(seq: i64) -> Self {
        Cursor(seq)
    }

    /// Reads a cursor made by [`Cursor::encode`].
    pub fn parse(cursor: &str) -> Result<Self, InvalidInput> {
        let invalid = || InvalidInput("the cursor is not valid".into());
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        text.strip_prefix(Self::PREFIX)
            .and_then(|seq| seq.parse::<i64>().ok())
            .filter(|seq| *seq >= 0)
            .map(Cursor)
            .ok_or_else(invalid)
    }

    /// The opaque form clients see.
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}{}", Self::PREFIX, self.0))
    }

    /// The message position it points at.
    pub fn seq(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor::at(42).encode();
        assert_eq!(Cursor::parse(&cursor).unwrap().seq(), 42);
        for bad in
            ["", "!!!", "bXNnOg", &URL_SAFE_NO_PAD.encode("msg:-1"), &URL_SAFE_NO_PAD.encode("x:1")]
        {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(PageSize::parse(None, "last").unwrap().get(), PageSize::DEFAULT);
        assert_eq!(PageSize::parse(Some(100), "last").unwrap().get(), 100);
        assert!(PageSize::parse(Some(0), "last").is_err());
        assert!(PageSize::parse(Some(101), "first").unwrap_err().0.starts_with("first"));
        assert!(PageSize::parse(Some(-1), "last").is_err());
    }
}
