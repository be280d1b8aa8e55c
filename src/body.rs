//! The body type every gateway response uses, and small constructors for it (JSON responses
//! included).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// Any error a body can yield while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed or buffered body, boxed so that proxied and generated responses share one type.
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body holding `bytes` in one piece.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Compact JSON for `value`. Serialising a `serde_json::Value` cannot fail.
pub fn json(value: &serde_json::Value) -> Body {
    full(value.to_string())
}

/// A JSON response; the one constructor every generated response goes through.
pub fn with_json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(json(&value));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
