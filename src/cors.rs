//! Which browser origins may call the API cross-origin (`CORS_ALLOWED_ORIGINS`).
//!
//! An origin is `scheme://host[:port]`, exactly as a browser sends it in the `Origin` header.
//! A value that can never match what a browser sends (a trailing slash, a path, upper case, a
//! default port spelled out) stops startup with a message saying how to write it, rather than
//! starting with a list that silently matches nothing.

use std::fmt;

/// The parsed `CORS_ALLOWED_ORIGINS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Empty: no CORS headers, so browsers allow same-origin pages only.
    #[default]
    SameOrigin,
    /// `*`: any origin.
    Any,
    /// These origins, each in the form browsers send.
    List(Vec<String>),
}

/// A listed origin that no browser would ever send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginError {
    /// The value as written.
    pub value: String,
    /// What is wrong, and how to write it.
    pub reason: String,
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self.value, self.reason)
    }
}

impl AllowedOrigins {
    /// Parses a comma-separated list, or `*`.
    pub fn parse(list: &str) -> Result<AllowedOrigins, OriginError> {
        let entries: Vec<&str> = list.split(',').map(str::trim).filter(|o| !o.is_empty()).collect();
        if entries.is_empty() {
            return Ok(AllowedOrigins::SameOrigin);
        }
        if entries.contains(&"*") {
            return Ok(AllowedOrigins::Any);
        }
        entries.into_iter().map(parse_origin).collect::<Result<_, _>>().map(AllowedOrigins::List)
    }

    /// Whether a request with this `Origin` header may proceed. `SameOrigin` allows nothing
    /// cross-origin here; callers decide what same-origin means for them.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::SameOrigin => false,
            AllowedOrigins::Any => true,
            AllowedOrigins::List(origins) => origins.iter().any(|allowed| allowed == origin),
        }
    }
}

fn parse_origin(value: &str) -> Result<String, OriginError> {
    let error = |reason: String| OriginError { value: value.to_string(), reason };
    let url = url::Url::parse(value)
        .map_err(|e| error(format!("is not an origin ({e}); write scheme://host[:port]")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(error("must start with http:// or https://".into()));
    }
    let origin = url.origin().ascii_serialization();
    if origin != value {
        return Err(error(format!(
            "is not an origin as browsers send it; write {origin:?} (scheme://host[:port], lower case, no path or trailing slash)"
        )));
    }
    Ok(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_as_browsers_send_them() {
        assert_eq!(AllowedOrigins::parse(""), Ok(AllowedOrigins::SameOrigin));
        assert_eq!(AllowedOrigins::parse(" * "), Ok(AllowedOrigins::Any));
        let list = AllowedOrigins::parse("http://a.test, https://b.test:8443").unwrap();
        assert_eq!(
            list,
            AllowedOrigins::List(vec!["http://a.test".into(), "https://b.test:8443".into()])
        );
        assert!(list.allows("https://b.test:8443"));
        assert!(!list.allows("https://b.test"));
        assert!(!AllowedOrigins::SameOrigin.allows("http://a.test"));
    }

    #[test]
    fn origins_no_browser_sends_are_refused_with_the_fix() {
        let error = AllowedOrigins::parse("http://localhost:3000/").unwrap_err();
        assert!(error.reason.contains("\"http://localhost:3000\""), "{error}");
        for bad in [
            "localhost:3000",
            "http://a.test/app",
            "HTTP://A.test",
            "http://a.test:80",
            "ftp://a.test",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
