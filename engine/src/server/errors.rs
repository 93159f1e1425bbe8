//! OpenAI-shaped error responses: `{"error": {"message", "type", "param", "code"}}` with the
//! status code the OpenAI API uses for the same failure, so clients (the official SDKs map
//! statuses to exception classes) react as they would to OpenAI.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// One failed request, as the client will see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`, `server_error`, ...
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (503 when the queue is full).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            param: param.map(str::to_string),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
        }
    }

    pub fn model_not_found(model: &str, served: &str) -> ApiError {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist; this server serves `{served}`"),
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    /// The bounded queue is full: come back later.
    pub fn overloaded(retry_after: u32) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            code: Some("server_overloaded"),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "The server is at capacity (every slot and queue place is taken); retry later",
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// A body extractor's rejection (too large, unreadable), with its own status.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> ApiError {
        let kind = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
        ApiError::new(status, kind, message)
    }

    /// The JSON object the client receives (also sent as an SSE event mid-stream).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// Engine errors: a bad parameter is the client's fault (400, naming it); the rest are ours.
impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match &e {
            Error::Param { name, .. } => ApiError::bad_request(e.to_string(), Some(name)),
            Error::ChatTemplate { .. } => ApiError::bad_request(e.to_string(), Some("messages")),
            // An image that does not decode or is too large.
            Error::Image { .. } => ApiError::bad_request(e.to_string(), Some("messages")),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_errors_are_400_and_name_the_parameter() {
        let e = ApiError::from(Error::Param { name: "top_p".into(), reason: "must be in [0, 1]".into() });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["error"]["param"], "top_p");
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn overload_carries_retry_after() {
        let resp = ApiError::overloaded(2).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn other_engine_errors_are_500() {
        let e = ApiError::from(Error::Server { reason: "x".into() });
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.body()["error"]["code"], serde_json::Value::Null);
    }
}
