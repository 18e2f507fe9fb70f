//! The API's one error shape: `{"error": "<what>", "detail": …}` with the
//! status that says whose fault it is. Every rejection axum would answer in
//! plain text is turned into it.
use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    daemon::{bgp::NodeError, controller::ControlError},
    desired::{changes::ChangeError, problem::Problem},
};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

/// What every error answer carries.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in a sentence.
    pub error: String,
    /// The problems, each naming the field it is about (`{"key", "message"}`), when there are any.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self { status, body: ErrorBody { error: error.into(), detail: serde_json::Value::Null } }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }

    /// 400 or 422 with one entry per problem, each naming its field.
    pub fn problems(status: StatusCode, problems: &[Problem]) -> Self {
        let detail = problems
            .iter()
            .map(|p| serde_json::json!({"key": p.key, "message": p.message}))
            .collect();
        let summary = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        Self {
            status,
            body: ErrorBody { error: summary, detail: serde_json::Value::Array(detail) },
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Refused(ChangeError::NotFound(what)) => Self::not_found(what),
            ControlError::Refused(ChangeError::Conflict(what)) => {
                Self::new(StatusCode::CONFLICT, what)
            }
            ControlError::Refused(ChangeError::Invalid(problems)) => {
                Self::problems(StatusCode::UNPROCESSABLE_ENTITY, &problems)
            }
            e @ ControlError::DoesNotFit(_) => Self::new(StatusCode::CONFLICT, e.to_string()),
            ControlError::Failed(what) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, what),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let status = match e {
            NodeError::NoBgp => StatusCode::CONFLICT,
            NodeError::Keep { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            NodeError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// axum's extractors answer in plain text; the API answers in JSON.
macro_rules! from_rejection {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(r: $rejection) -> Self {
                Self::new(r.status(), r.body_text())
            }
        }
    )*};
}

from_rejection!(
    axum::extract::rejection::BytesRejection,
    axum::extract::rejection::PathRejection,
    axum::extract::rejection::QueryRejection
);
