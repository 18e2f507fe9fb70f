//! What a browser must not be able to do to the API: the operator's own
//! browser is on the same machine, and any page it opens may send requests
//! to `127.0.0.1:9100`.
//!
//! - `Host` must name the API itself (its listen address, `localhost` for a
//!   loopback listen, or a name of `admin.allowed_hosts`): a page that
//!   rebinds its own DNS name to 127.0.0.1 sends its own name, and is refused.
//! - A browser's `Origin`, when sent, must be the API's own: a page of
//!   another origin is refused whatever it sends.
//! - A change (`POST`, `PUT`, `PATCH`, `DELETE`) must say
//!   `Content-Type: application/json`: a form or a `text/plain` body is what
//!   a page may send cross-origin without a CORS preflight.
//!
//! Together with the token (always required, see `auth`), no web page can
//! read or change anything.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::error::ApiError;

/// The `Host` values the API answers to.
#[derive(Clone, Debug)]
pub struct Hosts {
    port: u16,
    /// Lower-case host parts (an IPv6 address in brackets).
    names: BTreeSet<String>,
    /// Listening on every address: any IP literal is one of ours (an IP in
    /// `Host` cannot be a rebound DNS name).
    any_ip: bool,
}

impl Hosts {
    /// The hosts of an API listening on `listen`, plus `allowed` names
    /// (`admin.allowed_hosts`, reached with the listen port).
    pub fn new(listen: SocketAddr, allowed: &[String]) -> Self {
        let mut names: BTreeSet<String> = allowed.iter().map(|n| n.to_ascii_lowercase()).collect();
        let ip = listen.ip();
        names.insert(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
        if ip.is_loopback() {
            names.insert("localhost".into());
        }
        Self { port: listen.port(), names, any_ip: ip.is_unspecified() }
    }

    /// Whether `host` (a `Host` header: `name[:port]`) names the API.
    pub fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        if port != self.port {
            return false;
        }
        let name = name.to_ascii_lowercase();
        if self.names.contains(&name) {
            return true;
        }
        self.any_ip && name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok()
    }
}

/// `name[:port]` -> (name, port); no port is HTTP's 80.
fn split_host(host: &str) -> Option<(&str, u16)> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        match &host[end + 1..] {
            "" => (&host[..=end], None),
            rest => (&host[..=end], Some(rest.strip_prefix(':')?)),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if name.is_empty() {
        return None;
    }
    let port = match port {
        None => 80,
        Some(p) => p.parse().ok()?,
    };
    Some((name, port))
}

/// Methods that change something.
fn is_change(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// The middleware: `Host`, then `Origin`, then a change's `Content-Type`.
pub async fn check(State(hosts): State<Arc<Hosts>>, request: Request, next: Next) -> Response {
    match refusal(&hosts, request.method(), request.headers()) {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    }
}

fn refusal(hosts: &Hosts, method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    // HTTP/1.1 requires exactly one Host (RFC 9112, 3.2); hyper puts the
    // request target's authority there when the client sent an absolute URI.
    let mut values = headers.get_all(header::HOST).iter();
    let host = match (values.next(), values.next()) {
        (Some(host), None) => host.to_str().unwrap_or_default(),
        (None, _) => {
            return Some(ApiError::new(StatusCode::BAD_REQUEST, "the request has no Host header"));
        }
        (Some(_), Some(_)) => {
            return Some(ApiError::new(
                StatusCode::BAD_REQUEST,
                "the request has two Host headers",
            ));
        }
    };
    if !hosts.allows(host) {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host {:?} is not this API's address: use the listen address, or add the name to admin.allowed_hosts",
                shorten(host)
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let own = origin
            .strip_prefix("http://")
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host) || same_default_port(rest, host));
        if !own {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Origin {:?} is not this API's (http://{host}): requests from other web pages are refused",
                    shorten(origin)
                ),
            ));
        }
    }
    if is_change(method) {
        let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
        // DELETE carries no body; if it says it has one, it must be JSON too.
        let needed = *method != Method::DELETE || content_type.is_some();
        if needed && !content_type.is_some_and(is_json) {
            return Some(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{method} needs Content-Type: application/json (got {})",
                    content_type.map_or_else(|| "none".to_owned(), |t| format!("{:?}", shorten(t)))
                ),
            ));
        }
    }
    None
}

/// `http://name` and `Host: name:80` are the same origin.
fn same_default_port(origin: &str, host: &str) -> bool {
    split_host(origin).zip(split_host(host)).is_some_and(|((a, p), (b, q))| {
        p == q && a.eq_ignore_ascii_case(b) && !origin.contains('/')
    })
}

/// `application/json`, with parameters (`; charset=utf-8`) or not.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Echoed values stay short: a header may be 64 KiB.
fn shorten(text: &str) -> &str {
    let end = text.char_indices().nth(100).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn hosts_name_the_listen_address() {
        let loopback = Hosts::new(addr("127.0.0.1:9100"), &[]);
        for ok in ["127.0.0.1:9100", "localhost:9100", "LOCALHOST:9100"] {
            assert!(loopback.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example:9100",
            "127.0.0.1:9101",
            "127.0.0.1",
            "localhost",
            "127.0.0.2:9100",
            "",
            ":9100",
            "127.0.0.1:",
            "127.0.0.1:x",
            "[::1]:9100",
        ] {
            assert!(!loopback.allows(refused), "{refused}");
        }
        let named = Hosts::new(addr("192.0.2.1:80"), &["lb1.example.net".into()]);
        for ok in ["192.0.2.1", "192.0.2.1:80", "lb1.example.net", "LB1.example.net:80"] {
            assert!(named.allows(ok), "{ok}");
        }
        assert!(!named.allows("localhost:80"));
        assert!(!named.allows("lb2.example.net"));
        let everywhere = Hosts::new(addr("0.0.0.0:9100"), &[]);
        for ok in ["10.0.0.1:9100", "[2001:db8::1]:9100", "0.0.0.0:9100"] {
            assert!(everywhere.allows(ok), "{ok}");
        }
        assert!(!everywhere.allows("rebound.example:9100"));
        assert!(!everywhere.allows("localhost:9100"));
        let v6 = Hosts::new(addr("[::1]:9100"), &[]);
        assert!(v6.allows("[::1]:9100") && v6.allows("localhost:9100"));
    }

    #[test]
    fn json_is_json_with_or_without_parameters() {
        for ok in ["application/json", "Application/JSON", "application/json; charset=utf-8"] {
            assert!(is_json(ok), "{ok}");
        }
        for refused in ["text/plain", "application/jsonx", "application/x-www-form-urlencoded", ""]
        {
            assert!(!is_json(refused), "{refused}");
        }
    }
}
