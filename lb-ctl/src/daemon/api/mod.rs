//! The admin API: JSON over HTTP (`routes`, described by the OpenAPI
//! document it serves), the stats page, the metrics. Reads are served from
//! the view the controller publishes; changes are sent to the controller,
//! which answers once the kernel maps hold them.
pub mod access;
pub mod auth;
pub mod error;
pub mod metrics;
pub mod page;
pub mod rendered;
pub mod routes;
pub mod serve;
pub mod token;
pub mod trace_route;
pub mod view;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::{mpsc, watch};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use self::{error::ApiError, view::Stats};
use crate::{daemon::controller, write::reconciler};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub requests: mpsc::Sender<controller::Request>,
    pub stats: watch::Receiver<Arc<Stats>>,
    pub reconciler: reconciler::Handle,
    /// The node's announcements (`/api/v1/node`, drain).
    pub node: crate::daemon::bgp::Handle,
    /// `/metrics` and the page, once per published view.
    pub renders: Arc<rendered::Renders>,
    /// The packet trace's subscribers (`/api/v1/trace`).
    pub trace: crate::daemon::trace::Hub,
}

/// Largest request body: a service with a few thousand backends fits.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A request (body included) that takes longer is answered 408, unless
/// its change was already handed to the controller (see `HandedOver`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may use the API and how it is reached.
#[derive(Clone, Debug)]
pub struct Access {
    /// Required on every route but the probes and `/metrics`.
    pub token: Arc<str>,
    /// The `Host` values it answers to.
    pub hosts: access::Hosts,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "lb-ctl admin API", description = "Services, backends, stats and connections of the XDP load balancer. Changes answer once the kernel maps hold them, and survive a restart."),
    modifiers(&BearerAuth),
    security(("bearer" = []), ("basic" = [])),
    tags(
        (name = "services", description = "Services (IPVS virtual services)"),
        (name = "backends", description = "A service's backends (IPVS real servers)"),
        (name = "stats", description = "Counters, the connection table and the packet trace"),
        (name = "node", description = "This node's BGP announcements and its drain"),
        (name = "monitoring", description = "Probes, metrics and the stats page; /healthz, /readyz and /metrics need no token"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// Every route and its OpenAPI document, from the same list.
pub fn routes() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::list_services, routes::add_service))
        .routes(routes!(routes::get_service, routes::put_service, routes::delete_service))
        .routes(routes!(routes::add_backend))
        .routes(routes!(routes::patch_backend, routes::delete_backend))
        .routes(routes!(routes::get_stats))
        .routes(routes!(routes::list_conns))
        .routes(routes!(trace_route::trace))
        .routes(routes!(routes::get_node))
        .routes(routes!(routes::drain_node))
        .routes(routes!(routes::undrain_node))
        .routes(routes!(routes::get_metrics))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(routes::stats_page))
        .split_for_parts()
}

/// The whole application: routes, the document, where requests may come
/// from, auth, limits, JSON errors.
pub fn app(state: ApiState, access: Access) -> Router {
    let (router, openapi) = routes();
    let openapi = Arc::new(openapi);
    // The last layer sees a request first: Host, Origin and Content-Type,
    // then the token, then the time limit.
    router
        .route("/api/v1/openapi.json", get(move || async move { Json(openapi.as_ref().clone()) }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(time_limit))
        .layer(middleware::from_fn_with_state(access.token, auth::require_token))
        .layer(middleware::from_fn_with_state(Arc::new(access.hosts), access::check))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Set by a handler the moment its change is in the controller's queue.
/// From then on the change will be made, so the answer must be the
/// controller's, never a 408 that would say it was not.
#[derive(Clone, Debug, Default)]
pub struct HandedOver(Arc<AtomicBool>);

impl HandedOver {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Bounds the time a request may take, reading its body included, up to
/// the moment its change is handed to the controller: a 408 always means
/// nothing changed.
async fn time_limit(mut request: Request, next: Next) -> Response {
    let handed_over = HandedOver::default();
    request.extensions_mut().insert(handed_over.clone());
    let answer = next.run(request);
    tokio::pin!(answer);
    tokio::select! {
        biased;
        response = &mut answer => response,
        () = tokio::time::sleep(REQUEST_TIMEOUT) => {
            if handed_over.is_set() {
                answer.await
            } else {
                // Dropping the handler drops its request before the queue
                // took it (`Sender::reserve` is cancel-safe).
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request took too long; nothing was changed")
                    .into_response()
            }
        }
    }
}

/// Why the API will not listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "admin.listen = {0}: without admin.token_file the API only listens on loopback (127.0.0.1 or ::1); set a token to listen elsewhere"
    )]
    NeedsToken(SocketAddr),
    #[error("admin token: {0}")]
    Token(#[from] token::TokenError),
    #[error("admin.listen = {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Binds the listener. Elsewhere than loopback only with a token the
/// operator configured: a generated one lives on this machine only, and a
/// remote client would have no way to it but copying it by hand.
pub async fn bind(
    addr: SocketAddr,
    token_configured: bool,
) -> Result<tokio::net::TcpListener, ListenError> {
    if !token_configured && !addr.ip().is_loopback() {
        return Err(ListenError::NeedsToken(addr));
    }
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ListenError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Without a token the API listens on loopback only, and says which key
    /// to change otherwise; a token lets it listen anywhere.
    #[tokio::test]
    async fn without_a_token_only_loopback_is_listened_on() {
        for loopback in ["127.0.0.1:0", "127.3.2.1:0"] {
            let listener = bind(addr(loopback), false)
                .await
                .unwrap_or_else(|e| panic!("{loopback} without a token: {e}"));
            assert_eq!(listener.local_addr().unwrap().ip(), addr(loopback).ip());
        }
        for elsewhere in ["192.0.2.1:9100", "[2001:db8::1]:9100", "0.0.0.0:9100", "[::]:9100"] {
            let refused = bind(addr(elsewhere), false).await;
            let Err(e @ ListenError::NeedsToken(at)) = refused else {
                panic!("{elsewhere} without a token: {refused:?}, not refused for want of a token");
            };
            assert_eq!(at, addr(elsewhere));
            let message = e.to_string();
            assert!(message.starts_with(&format!("admin.listen = {elsewhere}: ")), "{message}");
            assert!(message.contains("admin.token_file"), "{message}");
        }
        // With a token the address is tried: 192.0.2.1 (TEST-NET-1) is no
        // address of this host, so binding fails, but not for the token.
        match bind(addr("192.0.2.1:9100"), true).await {
            Err(ListenError::Bind { addr: at, .. }) => assert_eq!(at, addr("192.0.2.1:9100")),
            other => panic!("192.0.2.1:9100 with a token: {other:?}"),
        }
    }
}
