//! `ApiError`: every failure of a request as `{"error": {"class", "message"}}` with its HTTP status.
//!
//! The classes are stable strings clients match on: `unauthorized`, `forbidden`, `bad_request`,
//! `not_found`, `conflict`, `payload_too_large`, `plan_changed`, `internal`, and the engine's own
//! error classes where a step's rule refused the request (`forbidden_address`,
//! `unsupported_source`), and the webhook rules' for a callback URL (`invalid_callback_url`,
//! `forbidden_address`, `webhook_secret_missing`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::cleanup::CleanupError;
use crate::engine::orchestrator::EngineError;
use crate::model::job::JobId;
use crate::model::machine::Rejected;
use crate::steps::StepError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub class: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, class: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            class: class.to_string(),
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn job_not_found(id: JobId) -> ApiError {
        ApiError::not_found(format!("job {id} not found"))
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"class": self.class, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::error!(%error, "the API could not read or write the state store");
        ApiError::internal(error.to_string())
    }
}

impl From<Rejected> for ApiError {
    /// A transition the job's status does not allow is a conflict with its current state.
    fn from(rejected: Rejected) -> ApiError {
        match rejected {
            Rejected::NotFound(id) => ApiError::job_not_found(id),
            other => ApiError::conflict(other.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> ApiError {
        match error {
            EngineError::Store(error) => error.into(),
            EngineError::Rejected(rejected) => rejected.into(),
            EngineError::Workflow(error) => ApiError::bad_request(error.to_string()),
            EngineError::Usage(message) => ApiError::bad_request(message),
            EngineError::Callback(error) => {
                ApiError::new(StatusCode::BAD_REQUEST, error.class, error.to_string())
            }
            EngineError::Source(error) => error.into(),
        }
    }
}

impl From<crate::model::sources::SourceError> for ApiError {
    fn from(error: crate::model::sources::SourceError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error.class(), error.to_string())
    }
}

impl From<CleanupError> for ApiError {
    fn from(error: CleanupError) -> ApiError {
        match error {
            CleanupError::PlanChanged { .. } => {
                ApiError::new(StatusCode::CONFLICT, "plan_changed", error.to_string())
            }
            CleanupError::NotFound(id) => ApiError::job_not_found(id),
            CleanupError::Rejected(rejected) => rejected.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<StepError> for ApiError {
    /// A source a step's rules refuse (the SSRF guard, an unknown scheme): the request is bad, and
    /// its class is the step's.
    fn from(error: StepError) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            error.class.as_str(),
            error.message.clone(),
        )
    }
}
