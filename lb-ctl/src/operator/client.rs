//! The CLI's HTTP/1.1 client of the admin API (`daemon::api`): one
//! connection per request, JSON in and out, a bearer token when one is set,
//! and every failure sorted into what the operator can do about it:
//! start the controller ([`ClientError::Unreachable`]), fix the token
//! ([`ClientError::Unauthorized`]), fix the request ([`ClientError::Refused`]).
use std::{fmt, io, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, StatusCode,
    body::Bytes,
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

/// The whole exchange (connect, send, read the answer) takes at most this long.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read: a connection list of 100000 entries fits.
const MAX_ANSWER_BYTES: usize = 128 << 20;

/// Why a request got no successful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, or no answer within [`TIMEOUT`].
    #[error("cannot reach the controller at {url}: {} — is `lb-ctl run` running?", describe_io(.source))]
    Unreachable { url: String, source: io::Error },
    /// 401: the API's message says whether a token was missing or wrong.
    #[error("authentication failed: {0}")]
    Unauthorized(String),
    /// Any other 4xx or 5xx, with the API's `{"error", "detail"}`.
    #[error("{status}: {error}")]
    Refused { status: StatusCode, error: String, detail: serde_json::Value },
    /// The answer is not what the API answers (not HTTP, not the expected JSON…).
    #[error("{0}")]
    Protocol(String),
    /// What the client was given cannot be used: an admin URL that is not
    /// `http://host[:port]`, a token that cannot go in a header.
    #[error("{0}")]
    Invalid(String),
}

/// `connection refused` rather than `Connection refused (os error 111)`.
fn describe_io(e: &io::Error) -> String {
    let text = match e.kind() {
        io::ErrorKind::ConnectionRefused => return "connection refused".into(),
        io::ErrorKind::ConnectionReset => return "connection reset".into(),
        io::ErrorKind::HostUnreachable => return "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => return "network unreachable".into(),
        _ => e.to_string(),
    };
    let text = match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "failed".into(),
    }
}

/// A client of one controller's admin API.
#[derive(Clone)]
pub struct Client {
    /// The URL as the operator should read it back: `http://host:port`.
    url: String,
    /// What to connect to: the host (brackets of an IPv6 address removed) and port.
    host: String,
    port: u16,
    /// The `Host` header: `host:port`.
    authority: String,
    /// A path the API sits under (behind a reverse proxy), without a trailing `/`.
    prefix: String,
    /// `Bearer TOKEN`, marked sensitive.
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the API at `admin` (`http://host[:port][/prefix]`, or
    /// `host:port`), sending `token` as `Authorization: Bearer` when set.
    pub fn new(admin: &str, token: Option<String>) -> Result<Self, ClientError> {
        let (host, port, prefix) = parse_admin_url(admin)
            .map_err(|why| ClientError::Invalid(format!("admin URL {admin:?}: {why}")))?;
        let authorization = match token {
            None => None,
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .ok()
                    .filter(|_| !token.is_empty() && !token.chars().any(char::is_whitespace))
                    .ok_or_else(|| {
                        ClientError::Invalid(
                            "the token is empty or holds spaces or control characters".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let authority =
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Self {
            url: format!("http://{authority}{prefix}"),
            host,
            port,
            authority,
            prefix,
            authorization,
            timeout: TIMEOUT,
        })
    }

    /// The same client with another overall timeout than [`TIMEOUT`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API's URL, normalised: `http://127.0.0.1:9100`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether requests carry a token.
    pub fn has_token(&self) -> bool {
        self.authorization.is_some()
    }

    /// Sends `method path` (path from `/`, query included, already
    /// percent-encoded) with `body` as JSON; the status and body of a 2xx answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let unreachable = |source| ClientError::Unreachable { url: self.url.clone(), source };
        let exchange = self.exchange(method.clone(), path, body);
        let (status, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer?,
            Err(_) => {
                return Err(unreachable(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} s", self.timeout.as_secs_f64()),
                )));
            }
        };
        if status.is_success() {
            return Ok((status, bytes));
        }
        Err(self.refusal(&method, path, status, &bytes))
    }

    /// The error of a non-2xx answer to `method path`.
    fn refusal(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        bytes: &[u8],
    ) -> ClientError {
        let (error, detail) = error_body(status, bytes);
        if status == StatusCode::UNAUTHORIZED {
            return ClientError::Unauthorized(error);
        }
        if status.is_client_error() || status.is_server_error() {
            return ClientError::Refused { status, error, detail };
        }
        ClientError::Protocol(format!(
            "{method} {path}: the controller at {} answered {status}, which lb-ctl does not expect",
            self.url
        ))
    }

    /// `GET path`, an answer of lines (NDJSON) read as they come: `each`
    /// gets every line, and says whether to go on. The answer's headers
    /// must come within the timeout; the lines may take as long as they take.
    pub async fn stream_lines(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let what = format!("GET {path}");
        let broken = |e: &dyn fmt::Display| {
            ClientError::Protocol(format!("{what}: the stream from {} broke: {e}", self.url))
        };
        let started = self.send(Method::GET, path, None);
        let (mut response, driver) = match tokio::time::timeout(self.timeout, started).await {
            Ok(answer) => answer?,
            Err(_) => {
                return Err(ClientError::Unreachable {
                    url: self.url.clone(),
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {} s", self.timeout.as_secs_f64()),
                    ),
                });
            }
        };
        let status = response.status();
        if !status.is_success() {
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| broken(&e))?
                .to_bytes();
            return Err(self.refusal(&Method::GET, path, status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = response.body_mut().frame().await {
            let frame = frame.map_err(|e| broken(&e))?;
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !each(&line[..end]) {
                    drop(driver);
                    return Ok(());
                }
            }
            if pending.len() > MAX_ANSWER_BYTES {
                return Err(broken(&"a line longer than the answer limit"));
            }
        }
        drop(driver);
        Ok(())
    }

    /// `GET path`, its JSON answer parsed as `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send_json(Method::GET, path, None).await
    }

    /// `method path` with `body`, the JSON answer parsed as `T`.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let (_, bytes) = self.request(method.clone(), path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!(
                "{method} {path}: the answer of the controller at {} is not understood: {e}",
                self.url
            ))
        })
    }

    /// One connection, one request, the whole answer.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let what = format!("{method} {path}");
        let request = self.build(&what, method, path, body)?;
        let (response, driver) = self.connect_and_send(&what, request).await?;
        let broken = |e: &dyn fmt::Display| {
            ClientError::Protocol(format!(
                "{what}: the exchange with {} failed (is it lb-ctl's admin API?): {e}",
                self.url
            ))
        };
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| broken(&e))?
            .to_bytes();
        drop(driver);
        Ok((status, bytes))
    }

    /// Sends `method path` on a connection of its own: the answer's head,
    /// and what drives the connection (the answer's body stops with it).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, AbortOnDrop), ClientError> {
        let what = format!("{method} {path}");
        let request = self.build(&what, method, path, body)?;
        self.connect_and_send(&what, request).await
    }

    async fn connect_and_send(
        &self,
        what: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, AbortOnDrop), ClientError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ClientError::Unreachable { url: self.url.clone(), source })?;
        let broken = |e: &dyn fmt::Display| {
            ClientError::Protocol(format!(
                "{what}: the exchange with {} failed (is it lb-ctl's admin API?): {e}",
                self.url
            ))
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| broken(&e))?;
        // Drives the connection; stopped with the exchange, however it ends.
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = sender.send_request(request).await.map_err(|e| broken(&e))?;
        Ok((response, driver))
    }

    /// The request `method path` with `body` as JSON.
    fn build(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(header::USER_AGENT, concat!("lb-ctl/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let payload = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        request
            .body(Full::new(payload))
            .map_err(|e| ClientError::Invalid(format!("{what}: cannot build the request: {e}")))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `error` and `detail` of an error answer; the start of its text, or the
/// status's reason, when it is not the API's JSON (a proxy's page…).
fn error_body(status: StatusCode, bytes: &[u8]) -> (String, serde_json::Value) {
    if let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(bytes)
        && let Some(serde_json::Value::String(error)) = body.remove("error")
    {
        return (error, body.remove("detail").unwrap_or(serde_json::Value::Null));
    }
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    let error = if line.is_empty() {
        status.canonical_reason().unwrap_or("no reason given").to_owned()
    } else if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line.to_owned()
    };
    (error, serde_json::Value::Null)
}

/// `http://host[:port][/prefix]` or `host:port`: the host to connect to
/// (an IPv6 address without its brackets), the port (80 by default) and the
/// path prefix (`""` or `/…` without a trailing `/`).
///
/// Hand-written on purpose, for its refusals. `http::Uri` (here through
/// hyper) takes `http://:9100`, port 0, `user:pw@` and `[nope]`, reads
/// `host:99999` as "no port", drops a `#fragment` silently and refuses
/// `host:9100/`; the `url` crate would bring IDNA's Unicode tables for one
/// command-line flag, and reads `localhost:9100` as scheme `localhost`.
/// Here each refusal says what is wrong in the operator's terms.
pub(crate) fn parse_admin_url(text: &str) -> Result<(String, u16, String), String> {
    let text = text.trim();
    let rest = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err("https is not supported: the admin API speaks plain HTTP; \
                        give http://HOST:PORT (or reach it through an SSH tunnel)"
                .into());
        }
        Some((scheme, _)) => return Err(format!("{scheme}:// is not http://")),
        None => text,
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if path.contains(['?', '#']) || authority.contains(['?', '#']) {
        return Err("a query or fragment has no place in the admin URL".into());
    }
    if authority.contains('@') {
        return Err("credentials go in --token-file or LB_TOKEN, not in the URL".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) =
            bracketed.split_once(']').ok_or("an IPv6 address needs its closing ']'")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("[{host}] is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("expected ':PORT' after ']'")?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => 80,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{port:?} is not a port (1 to 65535)"))?,
    };
    let host_ok = !host.is_empty()
        && (host.contains(':')
            || host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
    if !host_ok {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let prefix = path.trim_end_matches('/');
    if !prefix.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!("{prefix:?} is not a URL path"));
    }
    Ok((host.to_owned(), port, prefix.to_owned()))
}

/// RFC 3986's unreserved characters: all that a component keeps as it is.
const NOT_UNRESERVED: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `text` as one path segment or query value: everything but RFC 3986's
/// unreserved characters percent-encoded.
pub fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// What the test server saw: the request head (lower-cased header
    /// names) and the body.
    pub(crate) struct Seen {
        pub(crate) head: String,
        pub(crate) body: String,
    }

    impl Seen {
        pub(crate) fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    /// Serves `response` (a whole HTTP/1.1 answer) to one request.
    pub(crate) async fn serve_once(response: String) -> (String, tokio::task::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0_u8; 4096];
            let end = loop {
                let n = stream.read(&mut chunk).await.unwrap();
                assert_ne!(n, 0, "the client closed before the end of the head");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let length = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0_usize);
            while buf.len() < end + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert_ne!(n, 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8(buf[end..end + length].to_vec()).unwrap();
            stream.write_all(response.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            Seen { head, body }
        });
        (url, server)
    }

    pub(crate) fn answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn get_sends_the_token_and_returns_the_answer() {
        let (url, server) = serve_once(answer("200 OK", r#"[{"name":"web"}]"#)).await;
        let client = Client::new(&url, Some("s3cret".into())).unwrap();
        let (status, body) = client.request(Method::GET, "/api/v1/services", None).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], br#"[{"name":"web"}]"#);
        let seen = server.await.unwrap();
        assert!(seen.head.starts_with("GET /api/v1/services HTTP/1.1\r\n"), "{}", seen.head);
        assert_eq!(seen.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(seen.header("host"), Some(url.trim_start_matches("http://")));
        assert_eq!(seen.header("content-type"), None);
        assert_eq!(seen.body, "");
    }

    /// A chunked answer whose lines are cut across chunks reads line by
    /// line; the reader may stop early.
    #[tokio::test]
    async fn a_stream_is_read_line_by_line_and_may_stop_early() {
        use std::fmt::Write as _;
        let chunks = ["{\"a\":1}\n{\"a\"", ":2}\n", "{\"a\":3}\n"];
        let mut body = String::new();
        for c in chunks {
            let _ = write!(body, "{:x}\r\n{c}\r\n", c.len());
        }
        body.push_str("0\r\n\r\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n{body}"
        );
        let (url, server) = serve_once(response.clone()).await;
        let client = Client::new(&url, None).unwrap();
        let mut got = Vec::new();
        client
            .stream_lines("/api/v1/trace", |l| {
                got.push(String::from_utf8_lossy(l).into_owned());
                true
            })
            .await
            .unwrap();
        assert_eq!(got, [r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":3}"#]);
        server.await.unwrap();

        let (url, server) = serve_once(response).await;
        let client = Client::new(&url, None).unwrap();
        let mut seen = 0;
        client
            .stream_lines("/api/v1/trace", |_| {
                seen += 1;
                seen < 2
            })
            .await
            .unwrap();
        assert_eq!(seen, 2, "stopped after the second line");
        server.await.unwrap();

        // Refused: the API's error, as for any request.
        let (url, _server) = serve_once(answer(
            "429 Too Many Requests",
            r#"{"error":"8 traces are running already","detail":null}"#,
        ))
        .await;
        let e = Client::new(&url, None)
            .unwrap()
            .stream_lines("/api/v1/trace", |_| true)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Refused { status, error, .. }
                if *status == StatusCode::TOO_MANY_REQUESTS && error.contains("8 traces")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_body_goes_as_json_and_no_token_sends_no_authorization() {
        let (url, server) = serve_once(answer("201 Created", r#"{"name":"web"}"#)).await;
        let client = Client::new(&format!("{url}/"), None).unwrap();
        let json: serde_json::Value = client
            .send_json(Method::POST, "/api/v1/services", Some(serde_json::json!({"name": "web"})))
            .await
            .unwrap();
        assert_eq!(json["name"], "web");
        let seen = server.await.unwrap();
        assert!(seen.head.starts_with("POST /api/v1/services HTTP/1.1\r\n"), "{}", seen.head);
        assert_eq!(seen.header("content-type"), Some("application/json"));
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(seen.body, r#"{"name":"web"}"#);
    }

    #[tokio::test]
    async fn a_prefix_in_the_url_is_kept() {
        let (url, server) = serve_once(answer("204 No Content", "")).await;
        let client = Client::new(&format!("{url}/lb/"), None).unwrap();
        let (status, body) =
            client.request(Method::DELETE, "/api/v1/services/web", None).await.unwrap();
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(body.is_empty());
        let seen = server.await.unwrap();
        assert!(seen.head.starts_with("DELETE /lb/api/v1/services/web HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn an_api_error_is_refused_with_its_detail() {
        let body = r#"{"error":"port: 0 is out of range","detail":[{"key":"port","message":"0 is out of range"}]}"#;
        let (url, _server) = serve_once(answer("422 Unprocessable Entity", body)).await;
        let client = Client::new(&url, None).unwrap();
        let e = client.request(Method::POST, "/api/v1/services", None).await.unwrap_err();
        let ClientError::Refused { status, error, detail } = e else { panic!("{e:?}") };
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error, "port: 0 is out of range");
        assert_eq!(detail[0]["key"], "port");
    }

    #[tokio::test]
    async fn a_401_is_unauthorized_with_the_api_message() {
        let (url, _server) =
            serve_once(answer("401 Unauthorized", r#"{"error":"wrong token","detail":null}"#))
                .await;
        let client = Client::new(&url, Some("guess".into())).unwrap();
        let e = client.request(Method::GET, "/api/v1/stats", None).await.unwrap_err();
        assert!(matches!(&e, ClientError::Unauthorized(m) if m == "wrong token"), "{e:?}");
    }

    #[tokio::test]
    async fn a_non_json_error_keeps_its_first_line() {
        let page = "<html>\n502 Bad Gateway</html>";
        let response = format!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
            page.len()
        );
        let (url, _server) = serve_once(response).await;
        let e = Client::new(&url, None)
            .unwrap()
            .request(Method::GET, "/api/v1/stats", None)
            .await
            .unwrap_err();
        let ClientError::Refused { status, error, detail } = e else { panic!("{e:?}") };
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(error, "<html>");
        assert!(detail.is_null());
    }

    #[tokio::test]
    async fn unparsable_json_is_a_protocol_error() {
        let (url, _server) = serve_once(answer("200 OK", "not json")).await;
        let client = Client::new(&url, None).unwrap();
        let e = client.get_json::<Vec<serde_json::Value>>("/api/v1/services").await.unwrap_err();
        assert!(matches!(&e, ClientError::Protocol(m) if m.contains("not understood")), "{e:?}");
    }

    #[tokio::test]
    async fn a_server_that_does_not_speak_http_is_a_protocol_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
            let _ = stream.shutdown().await;
        });
        let e = Client::new(&url, None)
            .unwrap()
            .request(Method::GET, "/api/v1/stats", None)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Protocol(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(&format!("http://{addr}"), None).unwrap();
        let e = client.request(Method::GET, "/api/v1/services", None).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Unreachable { url, .. } if *url == format!("http://{addr}"))
        );
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach the controller at http://{addr}: connection refused — is `lb-ctl run` running?"
            )
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out_as_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(stream);
        });
        let client = Client::new(&url, None).unwrap().with_timeout(Duration::from_millis(200));
        let e = client.request(Method::GET, "/api/v1/services", None).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Unreachable { source, .. } if source.kind() == io::ErrorKind::TimedOut),
            "{e:?}"
        );
        assert!(e.to_string().contains("no answer within 0.2 s"), "{e}");
        hold.abort();
    }

    #[test]
    fn admin_urls_are_parsed_or_refused() {
        let ok = |s: &str| parse_admin_url(s).unwrap();
        assert_eq!(ok("http://127.0.0.1:9100"), ("127.0.0.1".into(), 9100, String::new()));
        assert_eq!(ok("HTTP://lb.example:9100/"), ("lb.example".into(), 9100, String::new()));
        assert_eq!(ok("http://localhost"), ("localhost".into(), 80, String::new()));
        assert_eq!(ok("127.0.0.1:9100"), ("127.0.0.1".into(), 9100, String::new()));
        assert_eq!(ok("http://[::1]:9100/lb/"), ("::1".into(), 9100, "/lb".into()));
        for bad in [
            "https://127.0.0.1:9100",
            "ftp://x",
            "http://",
            "http://:9100",
            "http://host:0",
            "http://host:99999",
            "http://host:port",
            "http://user:pw@host:9100",
            "http://host:9100/?x=1",
            "http://[::1",
            "http://[nope]:1",
            "http://ho st:1",
            "",
            "junk junk",
        ] {
            assert!(parse_admin_url(bad).is_err(), "{bad} was accepted");
        }
        let e = Client::new("https://127.0.0.1:9100", None).unwrap_err();
        assert!(matches!(&e, ClientError::Invalid(m) if m.contains("https is not supported")));
    }

    #[test]
    fn the_url_reads_back_normalised_and_tokens_are_checked() {
        let client = Client::new("127.0.0.1:9100/", Some("t".into())).unwrap();
        assert_eq!(client.url(), "http://127.0.0.1:9100");
        assert!(client.has_token());
        assert!(!format!("{client:?}").contains("Bearer"));
        assert_eq!(Client::new("http://[::1]:9100", None).unwrap().url(), "http://[::1]:9100");
        for bad in ["", "two words", "new\nline"] {
            assert!(matches!(
                Client::new("http://127.0.0.1:9100", Some(bad.into())),
                Err(ClientError::Invalid(_))
            ));
        }
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode_component("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(encode_component("a/b c?d"), "a%2Fb%20c%3Fd");
        assert_eq!(encode_component("é"), "%C3%A9");
        for byte in 0..=127_u8 {
            let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
            let expected =
                if unreserved { char::from(byte).to_string() } else { format!("%{byte:02X}") };
            assert_eq!(encode_component(&char::from(byte).to_string()), expected);
        }
    }
}
