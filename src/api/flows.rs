//! `/flows` and `/flows/{id}`: list, create or replace, read and delete flows.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::params::{Path, QueryParams, content_type, paging_headers, parse_uuid};
use super::{ApiError, ApiResult, AppState};
use crate::store::{Flow, FlowFilter, FlowInfo, PutOutcome};

/// The JSON form of a flow as served: the resource plus its grains' `timerange`.
pub fn flow_json(info: &FlowInfo) -> Value {
    let mut value = serde_json::to_value(&info.flow).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert(
            "timerange".into(),
            Value::String(info.timerange.to_string()),
        );
    }
    value
}

/// `GET /flows`: flows matching the filters, a page at a time.
pub async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let query = QueryParams::parse(
        raw.as_deref(),
        &["source_id", "format", "label", "timerange", "limit", "page"],
        true,
    )?;
    let filter = FlowFilter {
        source_id: query.uuid("source_id")?,
        format: query.format("format")?,
        label: query.get("label").map(str::to_owned),
        tags: query.tags(),
        timerange: query.timerange("timerange")?,
    };
    let request = query.page(&state.config.limits)?;
    let page = state.store.list_flows(&filter, &request).await?;
    let body: Vec<Value> = page.items.iter().map(flow_json).collect();
    let mut response = Json(body).into_response();
    paging_headers(response.headers_mut(), "/flows", &query, &request, &page);
    Ok(response)
}

/// `GET /flows/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    QueryParams::parse(raw.as_deref(), &[], false)?;
    let id = parse_uuid("flow id", &id)?;
    let info = state
        .store
        .get_flow(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("flow {id} not found")))?;
    Ok(Json(flow_json(&info)))
}

/// `PUT /flows/{id}`: 201 with the flow when created, 204 when replaced.
pub async fn put_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    QueryParams::parse(raw.as_deref(), &[], false)?;
    let id = parse_uuid("flow id", &id)?;
    let flow = parse_flow_body(&state, id, &headers, body).await?;
    let outcome = state.store.put_flow(flow).await?;
    match outcome {
        PutOutcome::Updated => Ok(StatusCode::NO_CONTENT.into_response()),
        PutOutcome::Created => {
            let info = state.store.get_flow(id).await?.ok_or_else(|| {
                ApiError::internal(format!("flow {id} vanished after its creation"))
            })?;
            let mut response = (StatusCode::CREATED, Json(flow_json(&info))).into_response();
            if let Ok(location) = format!("/flows/{id}").parse() {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
    }
}

/// `DELETE /flows/{id}`: the flow and all its grains.
pub async fn delete_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<StatusCode> {
    QueryParams::parse(raw.as_deref(), &[], false)?;
    let id = parse_uuid("flow id", &id)?;
    if state.store.delete_flow(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("flow {id} not found")))
    }
}

/// Reads a JSON request body up to the configured limit.
pub async fn read_json_body(state: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<Value> {
    match content_type(headers).as_deref() {
        Some("application/json") => {}
        Some(other) => {
            return Err(ApiError::unsupported_media(format!(
                "the body must be application/json, not {other}"
            )));
        }
        None => {
            return Err(ApiError::unsupported_media(
                "the body must be application/json (Content-Type is missing)",
            ));
        }
    }
    let limit = state.config.limits.max_json_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::too_large(
                "limits.max_json_body_bytes",
                format!("the JSON body is over {limit} bytes"),
            )
        } else {
            ApiError::bad_body(format!("cannot read the body: {e}"))
        }
    })?;
    state.metrics.add_received(bytes.len() as u64);
    if bytes.is_empty() {
        return Err(ApiError::bad_body(
            "the body is empty; send the flow as a JSON object",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_body(format!("the body is not valid JSON: {e}")))
}

/// Parses and validates a flow body for the flow `id` of the path.
async fn parse_flow_body(
    state: &AppState,
    id: uuid::Uuid,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Flow> {
    let value = read_json_body(state, headers, body).await?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::bad_body("the flow must be a JSON object"));
    };
    match map.get("id") {
        None => {
            map.insert("id".into(), Value::String(id.to_string()));
        }
        Some(value) => {
            let body_id = body_uuid("id", value)?;
            if body_id != id {
                return Err(ApiError::bad_body(format!(
                    "the body's id {body_id} is not the id of the path {id}"
                )));
            }
        }
    }
    match map.get("source_id") {
        None => return Err(ApiError::bad_body("`source_id` is missing")),
        Some(value) => body_uuid("source_id", value)?,
    };
    // Computed or kept by the service: what a client sends for them is ignored.
    for computed in ["timerange", "created", "metadata_updated"] {
        map.remove(computed);
    }
    if let Some(params) = map.get("essence_parameters") {
        validate_rationals("essence_parameters", params)?;
    }
    for (name, value) in &map {
        if name.ends_with("_rate") {
            validate_rationals(name, value)?;
        }
    }
    serde_json::from_value::<Flow>(Value::Object(map))
        .map_err(|e| ApiError::bad_body(format!("invalid flow: {e}")))
}

/// The UUID string of the body's field `name`, or a 400 naming it.
fn body_uuid(name: &str, value: &Value) -> ApiResult<uuid::Uuid> {
    let Value::String(text) = value else {
        return Err(ApiError::bad_body(format!(
            "`{name}` must be a UUID string, not {value}"
        )));
    };
    uuid::Uuid::try_parse(text)
        .map_err(|e| ApiError::bad_body(format!("`{name}`: {text:?} is not a UUID ({e})")))
}

/// Every object with a `numerator` must be a rational: integer numerator, positive
/// integer denominator (default 1).
fn validate_rationals(path: &str, value: &Value) -> ApiResult<()> {
    match value {
        Value::Object(map) => {
            if map.contains_key("numerator") {
                return validate_rational(path, map);
            }
            for (k, v) in map {
                validate_rationals(&format!("{path}.{k}"), v)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                validate_rationals(&format!("{path}[{i}]"), v)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn validate_rational(path: &str, map: &Map<String, Value>) -> ApiResult<()> {
    let numerator_ok = map
        .get("numerator")
        .is_some_and(|n| n.is_i64() || n.is_u64());
    let denominator_ok = match map.get("denominator") {
        None => true,
        Some(d) => d.as_u64().is_some_and(|d| d > 0),
    };
    if numerator_ok && denominator_ok {
        Ok(())
    } else {
        Err(ApiError::bad_body(format!(
            "`{path}` must be a rational {{\"numerator\": integer, \"denominator\": positive integer}}"
        )))
    }
}
