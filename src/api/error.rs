//! The one error type of the HTTP layer, rendered as RFC 9457 `application/problem+json`.
//!
//! Every refusal the service makes goes through [`ApiError`], so every error a client sees
//! has the same shape: `type`, `title`, `status`, `detail`, and, for writes that failed
//! half-way, `committed` (grains stored before the fault), `offset` (byte offset of the
//! fault in the request body) and `timestamp` (the conflicting grain).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;
use crate::time::TimeError;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem to report to the client (boxed: errors travel far and should be cheap to move).
#[derive(Debug, Clone)]
pub struct ApiError(Box<Problem>);

impl std::ops::Deref for ApiError {
    type Target = Problem;

    fn deref(&self) -> &Problem {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut Problem {
        &mut self.0
    }
}

/// The fields of a problem document.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URN naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A short, fixed summary of the kind of problem.
    pub title: &'static str,
    /// The HTTP status.
    #[serde(serialize_with = "status_code")]
    pub status: StatusCode,
    /// What went wrong in this request and what to change.
    pub detail: String,
    /// Grains stored by this request before the fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    /// Byte offset of the fault in the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The origin timestamp of the grain concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// The challenge of a 401 or 403 (sent as `WWW-Authenticate`).
    #[serde(skip)]
    pub www_authenticate: Option<String>,
}

fn status_code<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl ApiError {
    /// A problem of the given kind.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> ApiError {
        ApiError(Box::new(Problem {
            kind,
            title,
            status,
            detail: detail.into(),
            committed: None,
            offset: None,
            timestamp: None,
            retry_after: None,
            www_authenticate: None,
        }))
    }

    /// 400: a query parameter, path segment or body is not acceptable.
    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "urn:grainstore:problem:bad-request",
            "Bad request",
            detail,
        )
    }

    /// 400: a timerange or timestamp that does not parse.
    pub fn bad_time(parameter: &str, e: &TimeError) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "urn:grainstore:problem:bad-time",
            "Invalid timestamp or timerange",
            format!("parameter `{parameter}`: {e}"),
        )
    }

    /// 400: a malformed request body (GSF, NDJSON, JSON).
    pub fn bad_body(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "urn:grainstore:problem:bad-body",
            "Malformed request body",
            detail,
        )
    }

    /// 404 for a resource.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "urn:grainstore:problem:not-found",
            "Not found",
            detail,
        )
    }

    /// 408: a request body that did not arrive in time; `limit` names the setting.
    pub fn body_idle(limit: &str, detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "urn:grainstore:problem:body-idle",
            "Request body idle",
            format!("{} (limit `{limit}`)", detail.into()),
        )
    }

    /// 413: something is over a configured limit.
    pub fn too_large(limit: &str, detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "urn:grainstore:problem:too-large",
            "Over a size limit",
            format!("{} (limit `{limit}`)", detail.into()),
        )
    }

    /// 415: a request body of a media type the endpoint does not take.
    pub fn unsupported_media(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "urn:grainstore:problem:unsupported-media-type",
            "Unsupported media type",
            detail,
        )
    }

    /// 406: no representation matches `Accept`.
    pub fn not_acceptable(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "urn:grainstore:problem:not-acceptable",
            "Not acceptable",
            detail,
        )
    }

    /// 503 with `Retry-After`: overloaded, try again shortly.
    pub fn overloaded(detail: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:grainstore:problem:overloaded",
            "Service overloaded",
            detail,
        );
        e.retry_after = Some(1);
        e
    }

    /// 429 with `Retry-After`: this client is over its own share of a limit.
    pub fn too_many(limit: &str, detail: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "urn:grainstore:problem:too-many",
            "Too many requests",
            format!("{} (limit `{limit}`)", detail.into()),
        );
        e.retry_after = Some(5);
        e
    }

    /// 500: a fault of the service itself.
    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "urn:grainstore:problem:internal",
            "Internal error",
            detail,
        )
    }

    /// Adds how many grains this request committed before the fault.
    pub fn with_committed(mut self, committed: u64) -> ApiError {
        self.committed = Some(committed);
        self
    }

    /// Adds the byte offset of the fault in the request body.
    pub fn with_offset(mut self, offset: u64) -> ApiError {
        self.offset = Some(offset);
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::FlowNotFound(_) | StoreError::SourceNotFound(_) => {
                ApiError::not_found(e.to_string())
            }
            StoreError::ReadOnly(_) => ApiError::new(
                StatusCode::FORBIDDEN,
                "urn:grainstore:problem:read-only",
                "Flow is read-only",
                format!("{e}; clear `read_only` with a PUT of the flow to write or delete grains"),
            ),
            StoreError::WrongFlow { .. } => ApiError::bad_body(format!(
                "{e}; a grain's flow_id must be the flow of the path"
            )),
            StoreError::Conflict {
                timestamp,
                committed,
            } => {
                let mut problem = ApiError::new(
                    StatusCode::CONFLICT,
                    "urn:grainstore:problem:conflict",
                    "Conflicting grain",
                    format!(
                        "a different grain is already stored at {timestamp}; grains are immutable, delete it first to replace it"
                    ),
                );
                problem.timestamp = Some(timestamp.to_string());
                problem.with_committed(committed)
            }
            StoreError::Busy { .. } => ApiError::overloaded(format!("{e}; retry shortly")),
            StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "stored data failed its integrity check");
                ApiError::internal(e.to_string())
            }
            StoreError::StorageFull(_) => {
                tracing::warn!(error = %e, "write refused: storage full");
                let mut problem = ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "urn:grainstore:problem:storage-full",
                    "Insufficient storage",
                    format!("{e}; writes resume once space is freed, reads are unaffected"),
                );
                problem.retry_after = Some(30);
                problem
            }
            StoreError::StorageReadOnly(_) => {
                tracing::warn!(error = %e, "write refused: storage read-only");
                let mut problem = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "urn:grainstore:problem:storage-read-only",
                    "Storage read-only",
                    format!("{e}; writes resume once it is writable, reads are unaffected"),
                );
                problem.retry_after = Some(30);
                problem
            }
            StoreError::Unavailable(_) | StoreError::Io(_) => {
                tracing::error!(error = %e, "store failure");
                let mut problem = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "urn:grainstore:problem:store-unavailable",
                    "Store unavailable",
                    e.to_string(),
                );
                problem.retry_after = Some(1);
                problem
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&*self.0).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the request's body may still be on its way: the connection
            // cannot carry another request, and the client is told so (RFC 9110, 408).
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(challenge) = self
            .www_authenticate
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
