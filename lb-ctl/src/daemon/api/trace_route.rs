//! `GET /api/v1/trace`: the packet trace as a stream of JSON lines
//! (NDJSON, chunked), one per packet (`daemon::trace`), for as long as the
//! client reads or until `count` packets. The subscription ends with the
//! response: a client that goes away, however abruptly, stops it.
// utoipa's expansion of `params(TraceQuery)` qualifies paths it need not.
#![allow(unused_qualifications)]
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    extract::{Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper::body::{Bytes, Frame};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{
    ApiState,
    error::{ApiError, ErrorBody},
};
use crate::daemon::trace::{ClientPrefix, Filter, Line, Subscription};

/// Most packets one request may ask for with `count`.
pub const MAX_COUNT: u64 = 1_000_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TraceQuery {
    /// Only this service's packets (its name).
    service: Option<String>,
    /// Only packets from or to this client: an address, or ADDR/LEN.
    client: Option<String>,
    /// Only packets the data plane dropped.
    drops_only: Option<bool>,
    /// End the stream after this many packets (1 to 1000000); without it,
    /// the stream goes on until the client closes it.
    count: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/trace", tag = "stats", params(TraceQuery),
    responses(
        (status = 200, description = "One JSON object per line (application/x-ndjson): `{\"type\":\"packet\",...}` for each traced packet (see the `Line` schema), `{\"type\":\"lost\",...}` when events were lost", content_type = "application/x-ndjson", body = crate::daemon::trace::Line),
        (status = 400, description = "A parameter is malformed; the error names it", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 429, description = "Too many traces are running", body = ErrorBody)))]
pub async fn trace(
    State(api): State<ApiState>,
    query: Result<Query<TraceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let bad = |e: String| ApiError::new(StatusCode::BAD_REQUEST, e);
    let client = query
        .client
        .as_deref()
        .map(ClientPrefix::parse)
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let count = match query.count {
        Some(n) if n == 0 || n > MAX_COUNT => {
            return Err(bad(format!("count {n}: from 1 to {MAX_COUNT}")));
        }
        count => count,
    };
    if let Some(name) = &query.service
        && !api.stats.borrow().services.iter().any(|s| &s.name == name)
    {
        let shown: String = name.chars().take(64).collect();
        return Err(ApiError::not_found(format!("service {shown:?}: no service of that name")));
    }
    let filter =
        Filter { service: query.service, client, drops_only: query.drops_only.unwrap_or(false) };
    let subscription = api
        .trace
        .subscribe(filter)
        .map_err(|e| ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))?;
    let body = Body::new(Lines { subscription, left: count });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// The response body: the subscription's lines, each JSON and a newline.
struct Lines {
    subscription: Subscription,
    /// Packets still to send, when the client asked for a count.
    left: Option<u64>,
}

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == Some(0) {
            return Poll::Ready(None);
        }
        match self.subscription.lines.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            // The hub stopped (the controller stops): the stream ends.
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(line)) => {
                if matches!(line, Line::Packet(_))
                    && let Some(left) = self.left.as_mut()
                {
                    *left -= 1;
                }
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(bytes)))))
            }
        }
    }
}
