//! Errors: what the server answers a bad request with, in the OpenAI API's shape, and what
//! stops the server.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;

/// An error answered to a client: `{"error": {"message", "type", "param", "code"}}` with an
/// HTTP status, as the OpenAI API answers.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `server_error`, ….
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400: the request is wrong, `param` names the field.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            message: match param {
                Some(p) => format!("{p}: {message}"),
                None => message,
            },
            kind: "invalid_request_error",
            param: param.map(String::from),
            code: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or incorrect API key: send `Authorization: Bearer <key>`".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn model_not_found(model: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist; this server serves `{served}`"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("no route {path}; this server answers /v1/models, /v1/completions, /v1/chat/completions, /health, /get_model_info and /update_weights_from_disk"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is over this server's limit of {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// A 408: the client took longer than the server's read timeout to send its request.
    pub fn timeout(limit: std::time::Duration) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "the request body did not arrive within this server's read timeout of {} s",
                limit.as_secs_f64()
            ),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// A 503 for a connection beyond the server's limit.
    pub fn too_many_connections(limit: usize) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("the server holds its limit of {limit} connections; retry later"),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// A 503: the bodies of requests being read or answered fill the server's budget.
    pub fn bodies_over_budget(limit: usize) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "the server holds its limit of {limit} bytes of request bodies; retry later"
            ),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn overloaded(queued: usize) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("the server is overloaded ({queued} completions queued); retry later"),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// A 500: the server failed on a valid request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// What stops `serve` before or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("loading checkpoint {path}: {source}")]
    Load {
        path: PathBuf,
        source: autodidact_core::Error,
    },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}
