//! Strict parsing of what clients put in paths, query strings and headers: every value
//! parses to a typed value or to a 400 that names the parameter and what is wrong.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use uuid::Uuid;

use super::{ApiError, ApiResult};
use crate::config::LimitsConfig;
use crate::store::{Format, Page, PageKey, PageRequest};
use crate::time::{TimeRange, Timestamp};

/// A parsed query string: known parameters only, each at most once.
#[derive(Debug, Default)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Parses `raw`, refusing parameters not in `allowed` (and `tag.{name}` ones unless
    /// `tags` is set) and parameters given twice.
    pub fn parse(raw: Option<&str>, allowed: &[&str], tags: bool) -> ApiResult<QueryParams> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let is_tag = tags && name.starts_with("tag.") && name.len() > 4;
            if !is_tag && !allowed.contains(&name.as_ref()) {
                let known = if allowed.is_empty() {
                    "this endpoint takes no query parameters".to_owned()
                } else {
                    format!(
                        "known parameters: {}{}",
                        allowed.join(", "),
                        if tags { ", tag.{name}" } else { "" }
                    )
                };
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{name}`; {known}"
                )));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad_request(format!(
                    "query parameter `{name}` is given more than once"
                )));
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(QueryParams { pairs })
    }

    /// The raw value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A timerange parameter; absent is `None`, present but empty or malformed is a 400.
    pub fn timerange(&self, name: &str) -> ApiResult<Option<TimeRange>> {
        self.get(name)
            .map(|text| parse_timerange(name, text))
            .transpose()
    }

    /// A timestamp parameter (`sec:nsec`).
    pub fn timestamp(&self, name: &str) -> ApiResult<Option<Timestamp>> {
        self.get(name)
            .map(|text| parse_timestamp(name, text))
            .transpose()
    }

    /// A UUID parameter.
    pub fn uuid(&self, name: &str) -> ApiResult<Option<Uuid>> {
        self.get(name)
            .map(|text| parse_uuid(name, text))
            .transpose()
    }

    /// A boolean parameter: `true` or `false`.
    pub fn bool(&self, name: &str) -> ApiResult<Option<bool>> {
        self.get(name)
            .map(|text| match text {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ApiError::bad_request(format!(
                    "query parameter `{name}` must be `true` or `false`, not {text:?}"
                ))),
            })
            .transpose()
    }

    /// A non-negative integer parameter.
    pub fn u64(&self, name: &str) -> ApiResult<Option<u64>> {
        self.get(name)
            .map(|text| {
                text.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "query parameter `{name}` must be a non-negative integer, not {text:?}"
                    ))
                })
            })
            .transpose()
    }

    /// A format URN parameter.
    pub fn format(&self, name: &str) -> ApiResult<Option<Format>> {
        self.get(name)
            .map(|text| {
                Format::from_urn(text).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "query parameter `{name}`: {text:?} is not one of urn:x-nmos:format:video, \
                         urn:x-nmos:format:audio, urn:x-nmos:format:data, urn:x-nmos:format:multi"
                    ))
                })
            })
            .transpose()
    }

    /// The `tag.{name}` filters.
    pub fn tags(&self) -> Vec<(String, String)> {
        self.pairs
            .iter()
            .filter_map(|(n, v)| n.strip_prefix("tag.").map(|t| (t.to_owned(), v.clone())))
            .collect()
    }

    /// The `limit` and `page` parameters of a listing.
    pub fn page(&self, limits: &LimitsConfig) -> ApiResult<PageRequest> {
        let limit = match self.u64("limit")? {
            None => limits.default_page_limit,
            Some(0) => {
                return Err(ApiError::bad_request(
                    "query parameter `limit` must be at least 1",
                ));
            }
            Some(n) if n > limits.max_page_limit as u64 => {
                return Err(ApiError::bad_request(format!(
                    "query parameter `limit` must be at most {}",
                    limits.max_page_limit
                )));
            }
            Some(n) => n as usize,
        };
        let after = self
            .get("page")
            .map(|text| {
                PageKey::decode(text).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "query parameter `page`: {text:?} is not a page key this service gave out"
                    ))
                })
            })
            .transpose()?;
        Ok(PageRequest { limit, after })
    }

    /// The query string with `page` replaced by `next`, for a `Link` header.
    fn with_page(&self, next: PageKey) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (n, v) in &self.pairs {
            if n != "page" {
                out.append_pair(n, v);
            }
        }
        out.append_pair("page", &next.encode());
        out.finish()
    }
}

/// Parses a timerange, naming the parameter on error.
pub fn parse_timerange(name: &str, text: &str) -> ApiResult<TimeRange> {
    if text.is_empty() {
        return Err(ApiError::bad_request(format!(
            "query parameter `{name}` is empty; omit it for all time (`_`) or give a range like [0:0_10:0)"
        )));
    }
    text.parse::<TimeRange>()
        .map_err(|e| ApiError::bad_time(name, &e))
}

/// Parses a `sec:nsec` timestamp, naming the parameter on error.
pub fn parse_timestamp(name: &str, text: &str) -> ApiResult<Timestamp> {
    text.parse::<Timestamp>()
        .map_err(|e| ApiError::bad_time(name, &e))
}

/// Parses a UUID, naming the parameter on error.
pub fn parse_uuid(name: &str, text: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(text)
        .map_err(|e| ApiError::bad_request(format!("`{name}`: {text:?} is not a UUID ({e})")))
}

/// Adds the paging headers of a listing: `Link: <…>; rel="next"`, `X-Paging-NextKey`,
/// `X-Paging-Limit`.
pub fn paging_headers<T>(
    headers: &mut HeaderMap,
    path: &str,
    query: &QueryParams,
    request: &PageRequest,
    page: &Page<T>,
) {
    headers.insert("x-paging-limit", HeaderValue::from(request.limit as u64));
    if let Some(next) = page.next {
        let link = format!("<{path}?{}>; rel=\"next\"", query.with_page(next));
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
        if let Ok(value) = HeaderValue::from_str(&next.encode()) {
            headers.insert("x-paging-nextkey", value);
        }
    }
}

/// Which media type a grain read should produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrainMedia {
    /// `application/x-gsf`.
    Gsf,
    /// `application/x-ndjson`.
    Ndjson,
    /// `application/json` (single grains).
    Json,
    /// `text/event-stream`.
    EventStream,
    /// The raw payload (single grains).
    Raw,
}

/// The path parameter `name` of a matched route (from axum's raw parameters, which cost
/// no deserializer or map, for the routes every grain request takes).
pub fn path_param<'a>(params: &'a RawPathParams, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find_map(|(param, value)| (param == name).then_some(value))
}

/// The route's path parameters, as axum's `Path` extracts them, but refused with a 400
/// problem (not axum's plain-text rejection) when they cannot be decoded: a path such as
/// `/flows/%FF` whose percent-encoding is not UTF-8.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            // A route without the parameters its handler takes is the service's fault.
            Err(e) if e.status().is_server_error() => Err(ApiError::internal(e.body_text())),
            Err(e) => Err(ApiError::bad_request(format!(
                "bad path: {}",
                e.body_text()
            ))),
        }
    }
}

/// The request's `Accept` header alone, for handlers that need no other header (taking
/// the whole `HeaderMap` copies every header).
pub struct Accept(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for Accept {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Accept(parts.headers.get(header::ACCEPT).cloned()))
    }
}

/// Picks the representation from `Accept` among `offered` (in preference order, the first
/// being the default for `*/*` or no `Accept`).
pub fn negotiate(accept: Option<&HeaderValue>, offered: &[GrainMedia]) -> ApiResult<GrainMedia> {
    let Some(accept) = accept else {
        return Ok(offered[0]);
    };
    let accept = accept
        .to_str()
        .map_err(|_| ApiError::bad_request("the Accept header is not valid text"))?;
    // Candidates by quality, then by the order the client listed them.
    let mut best: Option<(f32, GrainMedia)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let matched = match media.as_str() {
            "*/*" | "application/*" => Some(offered[0]),
            "application/x-gsf" => offered.iter().copied().find(|m| *m == GrainMedia::Gsf),
            "application/x-ndjson" => offered.iter().copied().find(|m| *m == GrainMedia::Ndjson),
            "application/json" => offered.iter().copied().find(|m| *m == GrainMedia::Json),
            "text/event-stream" => offered
                .iter()
                .copied()
                .find(|m| *m == GrainMedia::EventStream),
            "application/octet-stream" => offered.iter().copied().find(|m| *m == GrainMedia::Raw),
            _ => None,
        };
        if let Some(m) = matched
            && best.is_none_or(|(bq, _)| q > bq)
        {
            best = Some((q, m));
        }
    }
    best.map(|(_, m)| m).ok_or_else(|| {
        ApiError::not_acceptable(format!(
            "cannot produce any type of `Accept: {accept}`; this resource offers {}",
            offered
                .iter()
                .map(|m| m.mime())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

impl GrainMedia {
    /// The media type.
    pub fn mime(self) -> &'static str {
        match self {
            GrainMedia::Gsf => "application/x-gsf",
            GrainMedia::Ndjson => "application/x-ndjson",
            GrainMedia::Json => "application/json",
            GrainMedia::EventStream => "text/event-stream",
            GrainMedia::Raw => "application/octet-stream",
        }
    }
}

/// The media type of a request body, without parameters, lowercased.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}
