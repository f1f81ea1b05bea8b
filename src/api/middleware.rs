//! The whole tower stack in one readable place, outermost first:
//!
//! 1. panic catching: a handler panic becomes a 500 problem, the server goes on;
//! 2. request ids: `x-request-id` taken from the client or made, echoed in the response;
//! 3. tracing: one span per request carrying its id, method and path;
//! 4. metrics: requests by route and status, time to response headers;
//! 5. load shedding: past `server.max_concurrent_requests` requests in their handlers, a
//!    request is refused at once with 503 and `Retry-After` instead of queueing;
//! 6. CORS, as configured (outside authentication: preflights carry no credentials, and
//!    a browser must be able to read a 401);
//! 7. authentication and authorization (see [`super::auth`]): the bearer token (or, for
//!    event streams, the `access_token` query parameter, removed from the query here so
//!    that neither handlers nor logs see it) becomes a [`Principal`], and the route's
//!    scope is checked: 401 or 403 problems otherwise;
//! 8. live stream limits: SSE subscriptions, `follow=true` reads and `/events` take a
//!    place in `live.max_streams` (503) and `live.max_streams_per_credential` (429),
//!    held by the response body until it ends;
//! 9. compression of JSON responses only (never GSF, NDJSON or event streams, whose
//!    payloads are media and whose latency matters);
//! 10. a deadline for reaching response headers (not applied to uploads, which are
//!     bounded by the body idle timeout instead, nor to the streams after their headers).
//!
//! Request heads are bounded by the server's header read timeout (see `server`). The
//! request span records the path only, never the query string or headers, and the
//! principal's name, never its credential.

use std::sync::Arc;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::Predicate;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use super::auth::{self, Authenticator, Principal};
use super::live::{self, StreamLimits};
use super::{ApiError, AppState};

/// Wraps the routes in the service's middleware.
pub fn stack(routes: Router<AppState>, state: AppState) -> Router {
    let cors = cors_layer(&state.config.cors.allowed_origins);
    let max_requests = state.config.server.max_concurrent_requests;
    let authenticator = Arc::new(Authenticator::new(&state.config.auth).unwrap_or_else(|e| {
        // `Config::load` has checked this already; refuse everyone rather than run open.
        tracing::error!(key = e.key, reason = %e.reason, "invalid [auth] configuration; every request will be refused");
        Authenticator::deny_all(&state.config.auth.realm)
    }));
    let streams = state.streams.clone();
    routes
        .layer(middleware::from_fn_with_state(state.clone(), response_deadline))
        .layer(CompressionLayer::new().compress_when(JsonOnly))
        .layer(middleware::from_fn_with_state(streams, limit_live_streams))
        .layer(middleware::from_fn_with_state(authenticator, authorize))
        .layer(cors)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::overloaded("the service is at its limit of concurrent requests; retry shortly")
                }))
                .load_shed()
                .concurrency_limit(max_requests),
        )
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                // The path only: the query may hold an `access_token`.
                tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path(), principal = tracing::field::Empty)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(CatchPanicLayer::custom(|panic: Box<dyn std::any::Any + Send>| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            tracing::error!(panic = %what, "handler panicked");
            ApiError::internal("the request failed inside the service; it has been logged").into_response()
        }))
        .with_state(state)
}

/// Compresses JSON bodies only.
#[derive(Clone, Copy)]
struct JsonOnly;

impl Predicate for JsonOnly {
    fn should_compress<B: axum::body::HttpBody>(&self, response: &axum::http::Response<B>) -> bool {
        let json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct.split(';').next().unwrap_or("").trim();
                ct == "application/json" || ct == "application/problem+json"
            });
        // Tiny bodies gain nothing.
        let big_enough = response
            .body()
            .size_hint()
            .exact()
            .is_none_or(|n| n >= 1024);
        json && big_enough
    }
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::AUTHORIZATION,
            "last-event-id".parse().unwrap_or(header::ACCEPT),
        ])
        .expose_headers([
            header::LINK,
            "x-paging-nextkey".parse().unwrap_or(header::LINK),
            "x-paging-limit".parse().unwrap_or(header::LINK),
            "x-request-id".parse().unwrap_or(header::LINK),
        ]);
    if origins.iter().any(|o| o == "*") {
        return base.allow_origin(AllowOrigin::any());
    }
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    base.allow_origin(AllowOrigin::list(list))
}

/// Counts the request by route and status and times it to response headers.
async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // A reference-counted string: cloning it allocates nothing.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    state.metrics.record_request(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Authenticates the request and checks the scope of its route (see [`super::auth`]).
async fn authorize(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    // Taken out of every request, so handlers' strict query parsing never sees it.
    let query_token = auth::take_query_token(request.uri_mut());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(scope) = auth::required_scope(route.as_deref(), request.method()) else {
        return next.run(request).await;
    };
    let principal = (|| {
        let query_token = query_token?;
        if query_token.is_some() && !auth::is_event_stream(request.headers()) {
            return Err(auth::AuthFailure::BadRequest(
                "`access_token` is accepted only on event streams (Accept: text/event-stream); send `Authorization: Bearer TOKEN`".into(),
            ));
        }
        let header_token = auth::header_token(request.headers())?;
        if header_token.is_some() && query_token.is_some() {
            return Err(auth::AuthFailure::BadRequest(
                "give the token in the Authorization header or in `access_token`, not both".into(),
            ));
        }
        auth.authenticate(header_token.or(query_token.as_deref()))
    })();
    let principal = match principal {
        Ok(principal) => principal,
        Err(failure) => {
            tracing::debug!(reason = ?failure, "credentials refused");
            return auth.unauthorized(&failure).into_response();
        }
    };
    tracing::Span::current().record("principal", &*principal.id);
    if !principal.allows(scope) {
        tracing::debug!(principal = %principal.id, ?scope, "scope missing");
        let route = route.unwrap_or_else(|| request.uri().path().to_owned());
        return auth
            .forbidden(scope, request.method(), &route)
            .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Bounds the live streams open at once; the place is held by the response body.
async fn limit_live_streams(
    State(streams): State<Arc<StreamLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str());
    if !live::is_live_request(
        route,
        request.method(),
        request.headers(),
        request.uri().query(),
    ) {
        return next.run(request).await;
    }
    let anonymous = Principal::anonymous();
    let principal = request
        .extensions()
        .get::<Principal>()
        .unwrap_or(&anonymous);
    let permit = match streams.acquire(principal) {
        Ok(permit) => permit,
        Err(problem) => return problem.into_response(),
    };
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    response.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            // The permit lives as long as the body.
            let _ = &permit;
            chunk
        }))
    })
}

/// Refuses requests that do not reach their response headers in time (uploads excepted).
async fn response_deadline(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let upload = request.method() == Method::POST
        && request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|p| p.as_str() == "/flows/{id}/grains");
    if upload {
        return next.run(request).await;
    }
    let limit = Duration::from_millis(state.config.server.response_headers_timeout_ms);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut problem = ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "urn:grainstore:problem:timeout",
                "Request timed out",
                format!(
                    "the request did not reach its response within {} ms (limit `server.response_headers_timeout_ms`)",
                    limit.as_millis()
                ),
            );
            problem.retry_after = Some(1);
            problem.into_response()
        }
    }
}
