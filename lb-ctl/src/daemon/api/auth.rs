//! Who may use the API: every route but the probes' (`/healthz`,
//! `/readyz`) and Prometheus' (`/metrics`) needs `Authorization: Bearer
//! TOKEN`, or HTTP Basic with the token as password (what a browser can
//! send for the stats page). There is always a token: the operator's, or
//! the one `lb-ctl run` generates (see `token`).
use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;

use super::error::ApiError;

/// Paths anyone may read: liveness, readiness, metrics.
const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The middleware: passes the request on, or answers 401.
pub async fn require_token(
    State(token): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request.headers().get(header::AUTHORIZATION).and_then(presented_token);
    if presented.as_deref().is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let error = if presented.is_some() {
        "wrong token"
    } else {
        "this route needs Authorization: Bearer TOKEN (or HTTP Basic with the token as password)"
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, error).into_response();
    // Browsers ask for credentials on Basic; API clients read the JSON.
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"lb-ctl\", charset=\"UTF-8\""),
    );
    response
}

/// The token in `Bearer TOKEN`, or the password in `Basic base64(user:password)`.
fn presented_token(value: &HeaderValue) -> Option<String> {
    let value = value.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, password)| password.to_owned());
    }
    None
}

/// Compares without an early exit, so the time taken does not tell how
/// much of a guess was right. (The length is not secret.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_credentials_are_read() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(presented_token(&h("Bearer s3cret")).as_deref(), Some("s3cret"));
        assert_eq!(presented_token(&h("bearer s3cret")).as_deref(), Some("s3cret"));
        // admin:s3cret
        assert_eq!(presented_token(&h("Basic YWRtaW46czNjcmV0")).as_deref(), Some("s3cret"));
        assert_eq!(presented_token(&h("Basic !!!")), None);
        assert_eq!(presented_token(&h("Digest x")), None);
        assert_eq!(presented_token(&h("s3cret")), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
