//! Content negotiation for GraphQL over HTTP: which media type a response is sent as, and what
//! that means for its status code.
//!
//! The GraphQL-over-HTTP spec defines two response types. `application/graphql-response+json`
//! lets the status code say whether the request itself was bad (400 for a document that does
//! not parse or validate, with no `data` entry), while `application/json` is the legacy type
//! every older client understands, always answered with 200. A client that sends no `Accept`,
//! or `*/*`, gets the legacy type, as the spec recommends for compatibility.

use axum::http::{HeaderMap, header};

/// How a GraphQL response is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// `application/graphql-response+json`: request errors are HTTP 400 without `data`.
    GraphqlResponseJson,
    /// `application/json`: always HTTP 200, errors in the body.
    Json,
}

impl ResponseFormat {
    /// The `Content-Type` value.
    pub fn content_type(self) -> &'static str {
        match self {
            ResponseFormat::GraphqlResponseJson => {
                "application/graphql-response+json; charset=utf-8"
            }
            ResponseFormat::Json => "application/json; charset=utf-8",
        }
    }

    /// The format `headers` ask for, or `None` when the client accepts neither (406).
    pub fn negotiate(headers: &HeaderMap) -> Option<ResponseFormat> {
        let accept: Vec<&str> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        if accept.iter().all(|value| value.trim().is_empty()) {
            return Some(ResponseFormat::Json);
        }
        let mut best: Option<(f32, ResponseFormat)> = None;
        for range in accept.iter().flat_map(|value| value.split(',')) {
            let mut parts = range.split(';');
            let media_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|parameter| parameter.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let format = match media_type.as_str() {
                "application/graphql-response+json" => ResponseFormat::GraphqlResponseJson,
                "application/json" | "application/*" | "*/*" => ResponseFormat::Json,
                _ => continue,
            };
            // Earlier entries win ties, so "a, b" prefers a.
            if quality > 0.0 && best.is_none_or(|(best_quality, _)| quality > best_quality) {
                best = Some((quality, format));
            }
        }
        best.map(|(_, format)| format)
    }
}

/// Whether a POST body is declared as JSON (`application/json`, any parameters). Anything else
/// is refused with 415: besides following the spec, this is the CSRF defence. A web page can make
/// a visitor's browser POST `text/plain`, form or multipart bodies to any site without asking,
/// but `application/json` needs a CORS preflight, which other origins do not pass.
pub fn is_json_body(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn accept(value: &str) -> Option<ResponseFormat> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        ResponseFormat::negotiate(&headers)
    }

    #[test]
    fn accept_headers_choose_the_format() {
        use ResponseFormat::*;
        assert_eq!(ResponseFormat::negotiate(&HeaderMap::new()), Some(Json));
        assert_eq!(accept("application/json"), Some(Json));
        assert_eq!(accept("*/*"), Some(Json));
        assert_eq!(accept("application/graphql-response+json"), Some(GraphqlResponseJson));
        assert_eq!(
            accept("application/graphql-response+json, application/json;q=0.9"),
            Some(GraphqlResponseJson)
        );
        assert_eq!(accept("application/json, application/graphql-response+json"), Some(Json));
        assert_eq!(
            accept("application/json;q=0.5, application/graphql-response+json"),
            Some(GraphqlResponseJson)
        );
        assert_eq!(accept("application/graphql-response+json;q=0, */*"), Some(Json));
        assert_eq!(accept("text/html"), None);
        assert_eq!(accept("image/png;q=1, application/JSON;charset=utf-8"), Some(Json));
    }

    #[test]
    fn only_json_bodies_are_accepted() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_json_body(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("multipart/form-data; boundary=x"));
        assert!(!is_json_body(&HeaderMap::new()));
    }
}
