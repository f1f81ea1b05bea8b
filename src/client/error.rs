//! [`ClientError`], the one error type of the client, and [`Problem`], the server's
//! `application/problem+json` document it carries.

use serde::Deserialize;

use crate::gsf::GsfError;

/// A refusal from the server: its RFC 9457 problem document, as sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Problem {
    /// A URN naming the kind of problem (`urn:grainstore:problem:conflict`, ...).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// A short summary of the kind of problem.
    #[serde(default)]
    pub title: String,
    /// The HTTP status.
    #[serde(default)]
    pub status: u16,
    /// What went wrong and what to change.
    #[serde(default)]
    pub detail: String,
    /// Grains the request stored before the fault (writes).
    #[serde(default)]
    pub committed: Option<u64>,
    /// Byte offset of the fault in the request body (writes).
    #[serde(default)]
    pub offset: Option<u64>,
    /// The origin timestamp of the grain concerned (`sec:nsec`).
    #[serde(default)]
    pub timestamp: Option<String>,
    /// The `Retry-After` header, in seconds, when the server sent one.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem for a response that did not carry a problem document (a proxy's page,
    /// an empty body): the status and what the body said.
    pub(crate) fn from_status(status: u16, body: &[u8]) -> Problem {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        Problem {
            kind: "about:blank".into(),
            title: reason(status).into(),
            status,
            detail: if text.is_empty() {
                format!("the server answered {status} without a problem document")
            } else {
                text.chars().take(300).collect()
            },
            ..Problem::default()
        }
    }

    /// Parses a problem body, falling back to [`Problem::from_status`].
    pub(crate) fn parse(status: u16, body: &[u8], retry_after: Option<u64>) -> Problem {
        let mut problem = serde_json::from_slice::<Problem>(body)
            .ok()
            .filter(|p| !p.detail.is_empty() || !p.title.is_empty())
            .unwrap_or_else(|| Problem::from_status(status, body));
        problem.status = status;
        problem.retry_after = retry_after;
        problem
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)
    }
}

fn reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request; the problem document says why.
    #[error("the server refused the request: {0}")]
    Problem(Box<Problem>),
    /// A write stopped part-way: `committed` grains written through the writer are
    /// stored, the grain at `offset` (and everything after it) is not.
    #[error(
        "write stopped after {committed} grains were committed{}: {problem}",
        timestamp.as_ref().map(|t| format!(" (at grain {t})")).unwrap_or_default()
    )]
    PartialWrite {
        /// Grains stored through this writer, in every request it made.
        committed: u64,
        /// Byte offset of the fault in the request body that failed, when known.
        offset: Option<u64>,
        /// The origin timestamp of the grain at fault, when known.
        timestamp: Option<String>,
        /// The server's problem document.
        problem: Box<Problem>,
    },
    /// The server could not be reached, or kept answering "unavailable", through every
    /// retry the policy allows.
    #[error("the server is unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Requests made.
        attempts: u32,
        /// The last failure.
        last: Box<ClientError>,
    },
    /// A transport failure: connection refused or reset, timeout, invalid response.
    #[error("http transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server sent a GSF stream that does not decode.
    #[error("the server sent malformed gsf: {0}")]
    Gsf(#[from] GsfError),
    /// The server sent a response that is not what the API promises.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// The flow followed by a live stream was deleted.
    #[error("flow {0} was deleted")]
    FlowDeleted(uuid::Uuid),
    /// An argument the client cannot send (a bad URL, a grain of another flow, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The provider (or writer) was closed.
    #[error("the flow provider is closed")]
    Closed,
}

impl ClientError {
    /// The HTTP status of a server refusal (also through `Unavailable` and
    /// `PartialWrite`).
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }

    /// The server's problem document, when the server refused.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem(p) | ClientError::PartialWrite { problem: p, .. } => Some(p),
            ClientError::Unavailable { last, .. } => last.problem(),
            _ => None,
        }
    }

    /// Whether the server said the resource does not exist (404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether a different grain is already stored at a written timestamp (409).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// Whether trying again later may succeed: 503/502/504/429 and transport failures
    /// before a response.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            ClientError::Problem(p) => matches!(p.status, 429 | 502 | 503 | 504),
            ClientError::Transport(e) => e.is_connect() || e.is_timeout() || e.is_request(),
            _ => false,
        }
    }

    /// The server's `Retry-After`, in seconds.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            ClientError::Problem(p) => p.retry_after,
            _ => None,
        }
    }
}

/// The result type of the client.
pub type ClientResult<T> = Result<T, ClientError>;
