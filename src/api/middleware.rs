//! The service's middleware, outermost first:
//!
//! 1. request ids: `x-request-id` taken from the client or made, echoed in the response;
//! 2. tracing: one span per request carrying its id, method and path;
//! 3. metrics: requests by route and status, time to response headers;
//! 4. panic catching: a handler panic becomes a 500 problem (logged in the request's
//!    span, counted, with its request id), the server goes on;
//! 5. load shedding: past `server.max_concurrent_requests` requests in their handlers, a
//!    request is refused at once with 503 and `Retry-After` instead of queueing;
//! 6. CORS, as configured, or none at all while `cors.allowed_origins` is empty (outside
//!    authentication: preflights carry no credentials, and a browser must be able to
//!    read a 401);
//! 7. authentication and authorization (see [`super::auth`]): the bearer token (or, for
//!    event streams, the `access_token` query parameter, removed from the query here so
//!    that neither handlers nor logs see it) becomes a [`Principal`], and the route's
//!    scope is checked: 401 or 403 problems otherwise;
//! 8. live stream limits: SSE subscriptions, `follow=true` reads and `/events` take a
//!    place in `live.max_streams` (503) and `live.max_streams_per_credential` (429),
//!    held by the response body until it ends;
//! 9. a deadline for reaching response headers (not applied to uploads, which are
//!    bounded by the body idle timeout instead, nor to the streams after their headers;
//!    its timer is set only if the handler does not answer at its first poll): 503, or
//!    408 when it passes while the handler waits on the request's body;
//! 10. compression of JSON responses only (never GSF, NDJSON or event streams, whose
//!     payloads are media and whose latency matters), applied to the handler's finished
//!     response, so that other responses never pass through it.
//!
//! All of it is one service, [`Edge`], with one future per request: axum clones a
//! route's whole middleware stack for every request, and as separate layers (each
//! boxed, several holding allocated configuration) the clones and their futures cost
//! more than the handler of a single-grain GET. CORS is tower-http's, run for requests
//! that carry an `Origin` header and for `OPTIONS`; to the others, which no browser
//! sent, it would add only its fixed headers (`Vary`, `Access-Control-Expose-Headers`),
//! which are learnt from it once at start and added as it adds them. The router hands
//! `Edge` each request with the route it matched; a plain single-grain `GET` comes to it
//! from beside the router (see [`super::direct`]) with the same route's name, and passes
//! through all of the above alike.
//!
//! Request heads are bounded by the server's header read timeout (see `server`). The
//! request span records the path only, never the query string or headers, and the
//! principal's name, never its credential.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::Predicate;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use super::auth::{self, Authenticator, Principal};
use super::direct::App;
use super::live::{self, StreamLimits};
use super::{ApiError, AppState};

/// The request id header.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps the routes in the service's middleware; the single-grain read beside the router
/// passes through the same middleware (see [`super::direct`]).
pub fn stack(routes: Router<AppState>, state: AppState) -> App {
    let authenticator = Authenticator::new(&state.config.auth).unwrap_or_else(|e| {
        // `Config::load` has checked this already; refuse everyone rather than run open.
        tracing::error!(key = e.key, reason = %e.reason, "invalid [auth] configuration; every request will be refused");
        Authenticator::deny_all(&state.config.auth.realm)
    });
    let edge = Edge::new(state.clone(), authenticator);
    // One layer, so one boxed route service per route: axum boxes each `layer` call's
    // result separately and clones every box per request.
    let shared = edge.shared.clone();
    App::new(routes.layer(edge).with_state(state.clone()), shared, state)
}

/// The 500 problem a handler's panic becomes; the panic is logged in the request's span.
fn panic_response(panic: Box<dyn std::any::Any + Send>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    tracing::error!(panic = %what, "handler panicked");
    ApiError::internal("the request failed inside the service; it has been logged").into_response()
}

/// Request ids, tracing, metrics, panic catching, load shedding, CORS, authentication,
/// live stream limits, the response deadline and compression, as one layer (see the
/// module docs).
#[derive(Clone)]
pub struct Edge {
    shared: Arc<EdgeShared>,
}

pub struct EdgeShared {
    state: AppState,
    auth: Authenticator,
    streams: Arc<StreamLimits>,
    /// Places for requests in their handlers (`server.max_concurrent_requests`).
    slots: Arc<Semaphore>,
    /// `None` when no origin is allowed (`cors.allowed_origins` empty): no response then
    /// carries an `Access-Control-*` header, and an `OPTIONS` request is the router's.
    cors: Option<CorsLayer>,
    /// Applied to JSON responses only, after the handler (see [`EdgeShared::compress`]).
    compression: CompressionLayer<JsonOnly>,
    /// What `cors` adds to the response of a request without `Origin` (not `OPTIONS`).
    cors_plain: HeaderMap,
    deadline: Duration,
}

impl Edge {
    fn new(state: AppState, auth: Authenticator) -> Edge {
        let origins = &state.config.cors.allowed_origins;
        let cors = (!origins.is_empty()).then(|| cors_layer(origins));
        let cors_plain = cors.as_ref().map(plain_cors_headers).unwrap_or_default();
        let shared = EdgeShared {
            streams: state.streams.clone(),
            slots: Arc::new(Semaphore::new(state.config.server.max_concurrent_requests)),
            deadline: Duration::from_millis(state.config.server.response_headers_timeout_ms),
            state,
            auth,
            cors,
            cors_plain,
            compression: CompressionLayer::new().compress_when(JsonOnly),
        };
        Edge {
            shared: Arc::new(shared),
        }
    }
}

impl<S> Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService {
            shared: self.shared.clone(),
            inner,
        }
    }
}

/// The service of [`Edge`].
#[derive(Clone)]
pub struct EdgeService<S> {
    shared: Arc<EdgeShared>,
    inner: S,
}

type Inner = Box<dyn FnOnce(Request) -> BoxResponse + Send>;
type BoxResponse = Pin<Box<dyn Future<Output = Response> + Send>>;

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service (a route's handler) is always ready; readiness is taken in
        // `call`, where load shedding decides.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let shared = self.shared.clone();
        let inner = self.inner.clone();
        let route = match request.extensions().get::<MatchedPath>() {
            Some(matched) => Route::Matched(matched.clone()),
            None => Route::Unmatched,
        };
        Box::pin(async move { Ok(shared.handle(request, route, inner).await) })
    }
}

/// The route a request is served by, for metrics, scopes and stream limits.
#[derive(Clone)]
pub enum Route {
    /// Matched by the router.
    Matched(MatchedPath),
    /// Served without the router (see [`super::direct`]).
    Direct(&'static str),
    /// No route: the fallback.
    Unmatched,
}

impl Route {
    fn as_str(&self) -> Option<&str> {
        match self {
            Route::Matched(matched) => Some(matched.as_str()),
            Route::Direct(route) => Some(route),
            Route::Unmatched => None,
        }
    }
}

impl EdgeShared {
    pub(super) async fn handle<S>(
        self: Arc<Self>,
        mut request: Request,
        route: Route,
        inner: S,
    ) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        // Request id: the client's if it is a plain token, or a new one.
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) if is_plain_request_id(id) => id.clone(),
            _ => {
                let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
                let made = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
                let made = HeaderValue::from_str(made)
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
                request
                    .headers_mut()
                    .insert(REQUEST_ID.clone(), made.clone());
                made
            }
        };
        // Fields by `Display`, unquoted, as neither can hold a space or a control
        // character (see `is_plain_request_id` and `LogPath`): no client can forge a
        // field or an escape sequence in the log.
        let span = tracing::info_span!(
            "request",
            request_id = %id.to_str().unwrap_or(""),
            method = %request.method(),
            // The path only: the query may hold an `access_token`.
            path = %LogPath(request.uri().path()),
            principal = tracing::field::Empty,
        );
        let this = self.clone();
        let mut response = async move {
            let started = Instant::now();
            let method = request.method().clone();
            let response = std::panic::AssertUnwindSafe(this.clone().shed_and_serve(
                request,
                route.clone(),
                inner,
            ))
            .catch_unwind()
            .await
            .unwrap_or_else(panic_response);
            let status = response.status();
            let elapsed = started.elapsed();
            // Bodies of known size (JSON, problems, single grains), compressed JSON at its
            // size before compression; the grain streams count themselves as they go. A
            // `HEAD` answer's body is dropped after this layer.
            let size = match response.extensions().get::<Uncompressed>() {
                Some(Uncompressed(n)) => Some(*n),
                None if response.headers().contains_key(header::CONTENT_ENCODING) => None,
                None => response.body().size_hint().exact(),
            };
            if method != Method::HEAD
                && let Some(n) = size
            {
                this.state.metrics.add_sent(n);
            }
            this.state.metrics.record_request(
                route.as_str().unwrap_or("unmatched"),
                &method,
                status.as_u16(),
                elapsed,
            );
            if status.is_server_error() {
                tracing::error!(
                    status = status.as_u16(),
                    latency_ms = elapsed.as_millis() as u64,
                    "response failed"
                );
            } else {
                tracing::debug!(
                    status = status.as_u16(),
                    latency_ms = elapsed.as_millis() as u64,
                    "finished processing request"
                );
            }
            response
        }
        .instrument(span)
        .await;
        response.headers_mut().insert(REQUEST_ID.clone(), id);
        response
    }

    /// Load shedding, then CORS around the rest.
    async fn shed_and_serve<S>(
        self: Arc<Self>,
        request: Request,
        route: Route,
        inner: S,
    ) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        // Held until the response head, as a concurrency limit does.
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            return ApiError::overloaded(
                "the service is at its limit of concurrent requests; retry shortly",
            )
            .into_response();
        };
        let browser =
            request.headers().contains_key(header::ORIGIN) || request.method() == Method::OPTIONS;
        let cors = match &self.cors {
            Some(cors) if browser => cors,
            _ => {
                let mut response = self
                    .clone()
                    .authorize_and_serve(request, route, inner)
                    .await;
                let headers = response.headers_mut();
                for (name, value) in &self.cors_plain {
                    if name == header::VARY {
                        headers.append(header::VARY, value.clone());
                    } else {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                return response;
            }
        };
        let this = self.clone();
        let rest: Inner =
            Box::new(move |request| Box::pin(this.authorize_and_serve(request, route, inner)));
        let rest = std::sync::Mutex::new(Some(rest));
        let service = tower::service_fn(move |request: Request| {
            let rest = rest.lock().unwrap_or_else(|e| e.into_inner()).take();
            async move {
                Ok::<_, Infallible>(match rest {
                    Some(rest) => rest(request).await,
                    None => ApiError::internal("a request was served twice").into_response(),
                })
            }
        });
        match cors.layer(service).oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// Authentication and the route's scope, then the live stream limits and the rest.
    async fn authorize_and_serve<S>(
        self: Arc<Self>,
        mut request: Request,
        route: Route,
        inner: S,
    ) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        // Taken out of every request, so handlers' strict query parsing never sees it.
        let query_token = auth::take_query_token(request.uri_mut());
        let mut caller = None;
        if let Some(scope) = auth::required_scope(route.as_str(), request.method()) {
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
                        "give the token in the Authorization header or in `access_token`, not both"
                            .into(),
                    ));
                }
                self.auth
                    .authenticate(header_token.or(query_token.as_deref()))
            })();
            let principal = match principal {
                Ok(principal) => principal,
                Err(failure) => {
                    tracing::debug!(reason = ?failure, "credentials refused");
                    return self.auth.unauthorized(&failure).into_response();
                }
            };
            if !principal.anonymous {
                tracing::Span::current().record("principal", &*principal.id);
            }
            if !principal.allows(scope) {
                tracing::debug!(principal = %principal.id, ?scope, "scope missing");
                let route = route.as_str().unwrap_or(request.uri().path());
                return self
                    .auth
                    .forbidden(scope, request.method(), route)
                    .into_response();
            }
            caller = Some(principal);
        }
        self.limit_streams_and_serve(request, route, caller, inner)
            .await
    }

    /// Bounds the live streams open at once (the place is held by the response body),
    /// and bounds the time to response headers.
    async fn limit_streams_and_serve<S>(
        &self,
        request: Request,
        route: Route,
        caller: Option<Principal>,
        inner: S,
    ) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        let matched = route.as_str();
        let is_live = live::is_live_request(
            matched,
            request.method(),
            request.headers(),
            request.uri().query(),
        );
        let upload = match (request.method(), matched) {
            (&Method::POST, Some("/flows/{id}/grains")) => true,
            (&Method::PUT, Some(route)) => route == super::direct::GRAIN_ROUTE,
            _ => false,
        };
        let permit = if is_live {
            let principal = caller.unwrap_or_else(Principal::anonymous);
            match self.streams.acquire(&principal) {
                Ok(permit) => Some(permit),
                Err(problem) => return problem.into_response(),
            }
        } else {
            None
        };
        let accept_encoding = AcceptEncoding::of(request.headers());
        let started = tokio::time::Instant::now();
        // A body the handler waits for is the client's to send: when the deadline finds
        // the handler waiting on it, the answer is the client's 408, not the server's 503.
        let (request, body_awaited) = if upload || request.body().is_end_stream() {
            (request, None)
        } else {
            let awaited = Arc::new(AtomicBool::new(false));
            let flag = awaited.clone();
            let request = request.map(|inner| {
                Body::new(WatchedBody {
                    inner,
                    awaited: flag,
                })
            });
            (request, Some(awaited))
        };
        let serve = inner.oneshot(request).map(|r| match r {
            Ok(response) => response,
            Err(never) => match never {},
        });
        let mut serve = std::pin::pin!(serve);
        let response = if upload {
            serve.await
        } else if let Poll::Ready(response) = futures::poll!(serve.as_mut()) {
            // Answered without waiting (a grain from memory, say): no timer to set.
            response
        } else {
            match tokio::time::timeout_at(started + self.deadline, serve).await {
                Ok(response) => response,
                Err(_) if body_awaited.is_some_and(|a| a.load(Ordering::Relaxed)) => {
                    return ApiError::body_idle(
                        "server.response_headers_timeout_ms",
                        format!(
                            "the request body did not arrive whole within {} ms",
                            self.deadline.as_millis()
                        ),
                    )
                    .into_response();
                }
                Err(_) => {
                    let mut problem = ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "urn:grainstore:problem:timeout",
                        "Request timed out",
                        format!(
                            "the request did not reach its response within {} ms (limit `server.response_headers_timeout_ms`)",
                            self.deadline.as_millis()
                        ),
                    );
                    problem.retry_after = Some(1);
                    return problem.into_response();
                }
            }
        };
        let Some(permit) = permit else {
            return self.compress(accept_encoding, response).await;
        };
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
}

impl EdgeShared {
    /// Compresses a JSON response for a client that accepts gzip (tower-http's
    /// compression, run on the finished response). Other responses never pass through
    /// it; a JSON response that could have been compressed says `Vary: Accept-Encoding`
    /// either way. A client that accepts neither gzip nor identity gets the response
    /// uncompressed, never a 406 after its request has been carried out.
    async fn compress(&self, accepted: AcceptEncoding, mut response: Response) -> Response {
        if !JsonOnly.should_compress(&response) {
            return response;
        }
        if !accepts_gzip(accepted.values()) {
            response
                .headers_mut()
                .append(header::VARY, HeaderValue::from_static("accept-encoding"));
            return response;
        }
        // Noted for the byte count if it gets compressed: a compressed body's size is not
        // known ahead (the compression may also choose not to compress).
        let size = response.body().size_hint().exact();
        let mut probe = Request::new(Body::empty());
        for value in accepted.values().cloned() {
            probe.headers_mut().append(header::ACCEPT_ENCODING, value);
        }
        let mut response = Some(response);
        let service = tower::service_fn(move |_: Request| {
            let response = response.take().unwrap_or_default();
            async move { Ok::<_, Infallible>(response) }
        });
        let response = match self.compression.layer(service).oneshot(probe).await {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        };
        let mut response = response;
        if response.headers().contains_key(header::CONTENT_ENCODING)
            && let Some(n) = size
        {
            response.extensions_mut().insert(Uncompressed(n));
        }
        response
    }
}

/// A request's path for the log: as it is when it is ASCII (a URI's path holds no space,
/// no control character), else quoted and escaped (it may hold any Unicode character).
struct LogPath<'a>(&'a str);

impl std::fmt::Display for LogPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_ascii() {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// Whether a client's `x-request-id` is kept: 1 to 128 letters, digits and `-_.:/+=@`
/// (UUIDs, trace ids, base64), nothing that could read as another log field.
fn is_plain_request_id(id: &HeaderValue) -> bool {
    let id = id.as_bytes();
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// Whether `Accept-Encoding` allows gzip (the one compression built in): named with a
/// weight above zero, or not named and `*` allowed.
fn accepts_gzip<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    let mut gzip = None;
    let mut any = None;
    for item in values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q > 0.0);
        } else if coding == "*" {
            any = Some(q > 0.0);
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// Every `Accept-Encoding` line of a request, kept for the compression of a JSON answer:
/// the first (the usual case) without allocating.
struct AcceptEncoding(Option<HeaderValue>, Vec<HeaderValue>);

impl AcceptEncoding {
    fn of(headers: &HeaderMap) -> AcceptEncoding {
        let mut lines = headers.get_all(header::ACCEPT_ENCODING).iter();
        let first = lines.next().cloned();
        AcceptEncoding(first, lines.cloned().collect())
    }

    fn values(&self) -> impl Iterator<Item = &HeaderValue> {
        self.0.iter().chain(&self.1)
    }
}

/// The headers `cors` adds to the response of a plain request: one without `Origin`,
/// not `OPTIONS`. Learnt by running it once on such a request.
fn plain_cors_headers(cors: &CorsLayer) -> HeaderMap {
    let service =
        tower::service_fn(|_: Request| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
    let probe = Request::get("/").body(Body::empty()).unwrap_or_default();
    match cors.layer(service).oneshot(probe).now_or_never() {
        Some(Ok(response)) => response.headers().clone(),
        // The CORS future does not wait on anything for such a request.
        _ => HeaderMap::new(),
    }
}

/// A request body that records whether its reader is waiting on the client: set while
/// its last poll found no data, cleared when data (or the end) comes and when the body
/// is dropped. (Over HTTP/2 "no data" could also be the connection's own backlog; the
/// JSON bodies this guards are small enough to fit in one flow-control window.)
struct WatchedBody {
    inner: Body,
    awaited: Arc<AtomicBool>,
}

impl Drop for WatchedBody {
    /// A body the handler dropped is no longer waited for.
    fn drop(&mut self) {
        self.awaited.store(false, Ordering::Relaxed);
    }
}

impl HttpBody for WatchedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.awaited.store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The size before compression of a compressed response's body, for the byte count.
#[derive(Clone, Copy)]
struct Uncompressed(u64);

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

#[cfg(test)]
mod tests {
    use axum::routing::get;

    use super::*;

    /// The middleware around `routes`, over an embedded store in a temp dir.
    fn app(routes: Router<AppState>) -> (App, AppState, tempfile::TempDir) {
        let (state, dir) = super::super::test_state();
        (stack(routes, state.clone()), state, dir)
    }

    /// The deadline for response headers blames the client (408) only while the handler
    /// waits on the request's body: not once the body is read whole, nor once the handler
    /// has dropped it unread.
    #[tokio::test]
    async fn the_deadline_answers_408_only_while_the_body_is_awaited() {
        use axum::routing::put;
        use http_body_util::BodyExt;
        let routes = Router::new()
            .route(
                "/read",
                put(|body: Body| async move {
                    let _ = axum::body::to_bytes(body, 1 << 20).await;
                    std::future::pending::<()>().await;
                }),
            )
            .route(
                "/abandon",
                put(|mut body: Body| async move {
                    let _first = body.frame().await;
                    assert!(futures::poll!(body.frame()).is_pending());
                    drop(body);
                    std::future::pending::<()>().await;
                }),
            );
        let (state, _dir) = super::super::test_state();
        let mut config = (*state.config).clone();
        config.server.response_headers_timeout_ms = 200;
        let app = stack(routes, AppState::new(state.store.clone(), config));
        for (path, stalls, expected) in [
            ("/read", false, 503),
            ("/read", true, 408),
            ("/abandon", true, 503),
        ] {
            let (more, rest) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, Infallible>>(1);
            let body = if stalls {
                more.send(Ok(bytes::Bytes::from_static(b"{\"half")))
                    .await
                    .ok();
                Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rest))
            } else {
                Body::from("{}")
            };
            let request = Request::put(path).body(body).expect("request");
            let response = app.clone().oneshot(request).await.expect("response");
            assert_eq!(
                response.status(),
                expected,
                "{path}, stalled body: {stalls}"
            );
            drop(more);
        }
    }

    #[tokio::test]
    async fn a_handler_panic_is_a_counted_500_problem_with_the_request_id() {
        let routes = Router::new().route(
            "/boom",
            get(|| async {
                if true {
                    panic!("boom");
                }
                "never"
            }),
        );
        let (app, state, _dir) = app(routes);
        for id in ["first", "second"] {
            let request = Request::get("/boom")
                .header(&REQUEST_ID, id)
                .body(Body::empty())
                .expect("request");
            let response = app.clone().oneshot(request).await.expect("response");
            assert_eq!(response.status(), 500);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            assert_eq!(response.headers()[&REQUEST_ID], id);
        }
        let gauges = super::super::metrics::Gauges {
            sessions_active: 0,
            sessions_max: 0,
            live_streams: 0,
            live_fanouts: 0,
        };
        let text = state.metrics.render(&gauges, &[]);
        assert!(
            text.contains(
                r#"grainstore_http_requests_total{route="/boom",method="GET",status="500"} 2"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn only_json_is_compressed_and_only_for_clients_that_accept_gzip() {
        let json = serde_json::json!({ "items": vec!["a grain of sand"; 200] }).to_string();
        let routes = Router::new()
            .route(
                "/json",
                get(move || {
                    let json = json.clone();
                    async move { ([(header::CONTENT_TYPE, "application/json")], json) }
                }),
            )
            .route(
                "/raw",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "application/octet-stream")],
                        vec![7u8; 4096],
                    )
                }),
            );
        let (app, _state, _dir) = app(routes);
        let get = |path: &str, accept: &[&str]| {
            let mut request = Request::get(path);
            for value in accept {
                request = request.header(header::ACCEPT_ENCODING, *value);
            }
            app.clone()
                .oneshot(request.body(Body::empty()).expect("request"))
        };
        let encoding = |response: &Response| {
            response
                .headers()
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap_or("?").to_owned())
        };
        let varies = |response: &Response| {
            response
                .headers()
                .get_all(header::VARY)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("accept-encoding")))
        };

        let gzip = get("/json", &["gzip, deflate"]).await.expect("response");
        assert_eq!(gzip.status(), 200);
        assert_eq!(encoding(&gzip).as_deref(), Some("gzip"));
        assert!(varies(&gzip));
        // Several header lines count together.
        let lines = get("/json", &["identity", "gzip"]).await.expect("response");
        assert_eq!(encoding(&lines).as_deref(), Some("gzip"));

        for accept in [&[][..], &["identity"], &["gzip;q=0"], &["identity;q=0"]] {
            let plain = get("/json", accept).await.expect("response");
            assert_eq!(plain.status(), 200, "{accept:?}");
            assert_eq!(encoding(&plain), None, "{accept:?}");
            assert!(varies(&plain), "{accept:?}");
        }
        let raw = get("/raw", &["gzip"]).await.expect("response");
        assert_eq!(raw.status(), 200);
        assert_eq!(encoding(&raw), None);
    }

    #[test]
    fn gzip_is_accepted_when_named_or_by_a_wildcard() {
        let accepts = |values: &[&'static str]| {
            let values: Vec<HeaderValue> =
                values.iter().map(|v| HeaderValue::from_static(v)).collect();
            accepts_gzip(&values)
        };
        assert!(accepts(&["gzip"]));
        assert!(accepts(&["br;q=1.0, gzip;q=0.5"]));
        assert!(accepts(&["*"]));
        assert!(accepts(&["identity", "GZIP"]));
        assert!(!accepts(&[]));
        assert!(!accepts(&["identity"]));
        assert!(!accepts(&["gzip;q=0"]));
        assert!(!accepts(&["*;q=1, gzip;q=0"]));
        assert!(!accepts(&["br"]));
    }

    #[test]
    fn client_text_in_the_request_span_cannot_read_as_more_fields() {
        assert!(is_plain_request_id(&HeaderValue::from_static(
            "2c8f9a6e-5b1d-4c3a-9e7f-0a1b2c3d4e5f"
        )));
        assert!(is_plain_request_id(&HeaderValue::from_static(
            "00-4bf92f3577b34da6-01"
        )));
        for bad in ["", "x} principal=admin", "a\"b", "x y"] {
            let value = HeaderValue::from_str(bad).expect("header value");
            assert!(!is_plain_request_id(&value), "{bad:?}");
        }
        let long = HeaderValue::from_str(&"a".repeat(129)).expect("header value");
        assert!(!is_plain_request_id(&long));
        assert_eq!(LogPath("/flows/a%20b").to_string(), "/flows/a%20b");
        assert_eq!(
            LogPath("/x\u{3000}principal=admin\u{202e}").to_string(),
            r#""/x\u{3000}principal=admin\u{202e}""#
        );
    }
}
