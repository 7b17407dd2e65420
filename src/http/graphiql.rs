//! GraphiQL, served from the binary: the page at `GET /graphql` (for browsers) and its pinned
//! scripts under `/graphiql/`, so the playground works with no internet access and loads
//! nothing from anywhere else. `vendor/README.md` says where each file comes from and how to
//! update it.

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// Where the page may load from and connect to: only this server. GraphiQL and CodeMirror set
/// inline styles, and the stylesheet embeds its fonts as `data:` URIs.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; font-src 'self' data:; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const PAGE: &str = include_str!("graphiql/index.html");

/// The files under `/graphiql/`, with their media types.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    ("start.js", "text/javascript; charset=utf-8", include_bytes!("graphiql/start.js")),
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("graphiql/vendor/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("graphiql/vendor/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("graphiql/vendor/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("graphiql/vendor/react-dom.production.min.js"),
    ),
];

/// The GraphiQL page.
pub(super) fn page() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        PAGE,
    )
        .into_response();
    let headers = response.headers_mut();
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /graphiql/{file}`: one of the page's scripts or its stylesheet.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            // Versions are pinned in the binary; an hour keeps reloads fast and upgrades visible.
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *bytes,
    )
        .into_response()
}

/// Whether a `GET /graphql` without a query comes from a browser asking for a page.
pub(super) fn wants_html(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}
