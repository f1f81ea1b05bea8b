//! `/sources` and `/sources/{id}`: the sources that flows belong to.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};

use super::params::{Path, QueryParams, paging_headers, parse_uuid};
use super::{ApiError, ApiResult, AppState};
use crate::store::{Source, SourceFilter};

/// `GET /sources`: sources matching the filters, a page at a time.
pub async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let query = QueryParams::parse(raw.as_deref(), &["format", "label", "limit", "page"], true)?;
    let filter = SourceFilter {
        format: query.format("format")?,
        label: query.get("label").map(str::to_owned),
        tags: query.tags(),
    };
    let request = query.page(&state.config.limits)?;
    let page = state.store.list_sources(&filter, &request).await?;
    let mut response = Json(&page.items).into_response();
    paging_headers(response.headers_mut(), "/sources", &query, &request, &page);
    Ok(response)
}

/// `GET /sources/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Source>> {
    QueryParams::parse(raw.as_deref(), &[], false)?;
    let id = parse_uuid("source id", &id)?;
    state
        .store
        .get_source(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("source {id} not found")))
}
