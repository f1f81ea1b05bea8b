//! Store sessions as axum extractors. A handler that takes a [`FlowRead`] or [`FlowWrite`]
//! gets a session on the flow of its path, opened before the handler runs: an unknown
//! flow is a 404, a read-only flow refuses a write session with 403 (on the postgres
//! backend, a flow that was writable a moment ago may instead be refused by the first
//! commit, with the same status), and a full session pool answers 503 with
//! `Retry-After` instead of waiting long. The session is released
//! when the handler drops it or when the response stream that owns it ends, however it
//! ends (finished, failed, or the client gone).

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use super::params::{parse_uuid, path_param};
use super::{ApiError, AppState};
use crate::store::{FlowId, ReadSession, WriteSession};

/// A read session (a consistent snapshot) on the flow of the path.
pub struct FlowRead {
    /// The flow.
    pub flow: FlowId,
    /// The session.
    pub session: ReadSession,
}

/// A write session on the flow of the path.
pub struct FlowWrite {
    /// The flow.
    pub flow: FlowId,
    /// The session.
    pub session: WriteSession,
}

/// The `{id}` of the path, as a flow id. (The raw parameters, not `Path`: this runs on
/// every grain request, and a `Path` map costs a deserializer and a `HashMap`.)
async fn path_flow(parts: &mut Parts) -> Result<FlowId, ApiError> {
    let params = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("bad path: {e}")))?;
    let id = path_param(&params, "id").ok_or_else(|| {
        ApiError::internal("a flow session was asked for on a route without a flow id")
    })?;
    parse_uuid("flow id", id)
}

impl FromRequestParts<AppState> for FlowRead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let flow = path_flow(parts).await?;
        let session = state.store.open_read(flow).await?;
        Ok(FlowRead { flow, session })
    }
}

impl FromRequestParts<AppState> for FlowWrite {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let flow = path_flow(parts).await?;
        let session = state.store.open_write(flow).await?;
        Ok(FlowWrite { flow, session })
    }
}
