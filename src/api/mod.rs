//! The HTTP service: the router, the shared state, handlers grouped by resource, the
//! middleware stack, and the one error type.
//!
//! - [`service`]: `/`, `/healthz`, `/readyz`, `/metrics`, `/openapi.yaml`.
//! - [`sources`] and [`flows`]: the TAMS-style resources.
//! - [`grains`]: grain reads and writes as streams.
//! - [`params`]: strict parsing of query parameters and headers.
//! - [`direct`]: the service as hyper sees it, the router with the single-grain read
//!   beside it.
//! - [`middleware`]: tracing, timeouts, limits, load shedding, CORS, auth, compression, metrics.
//! - [`auth`]: access control: credentials, scopes, the 401/403 problems.
//! - [`error`]: [`ApiError`], rendered as `application/problem+json`.

pub mod auth;
pub mod body;
pub mod direct;
pub mod error;
pub mod fanout;
pub mod flows;
pub mod grains;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod middleware;
pub mod params;
pub mod service;
pub mod sessions;
pub mod sources;

use std::sync::Arc;

use axum::Router;
use axum::routing::{MethodRouter, get, put};
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ApiResult};

use crate::config::Config;
use crate::store::Store;
use metrics::Metrics;

/// What every handler shares: cloned for every request by each extractor and layer
/// that takes it, so it is one `Arc` (one reference count to touch, not one per field).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The fields of [`AppState`], reached through it by `Deref`.
pub struct Shared {
    /// The grain store.
    pub store: Arc<dyn Store>,
    /// The configuration the service started with.
    pub config: Arc<Config>,
    /// The service's counters.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the service begins to shut down: live streams end with a final
    /// event so their clients reconnect elsewhere and resume.
    pub shutdown: CancellationToken,
    /// The per-flow fan-outs that read each new grain once for all SSE subscribers.
    pub fanouts: Arc<fanout::Fanouts>,
    /// The live streams open, bounded in total and per credential.
    pub streams: Arc<live::StreamLimits>,
}

impl AppState {
    /// State for a store and configuration.
    pub fn new(store: Arc<dyn Store>, config: Config) -> AppState {
        let fanouts = Arc::new(fanout::Fanouts::new(
            store.clone(),
            config.live.fanout_capacity,
            config.live.inline_max_bytes,
        ));
        let streams = live::StreamLimits::new(&config.live);
        AppState(Arc::new(Shared {
            store,
            fanouts,
            streams,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
            shutdown: CancellationToken::new(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// State over an embedded store in a fresh temp dir (removed when the dir is dropped),
/// for unit tests of the HTTP layer.
#[cfg(test)]
pub(crate) fn test_state() -> (AppState, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let overrides = crate::config::Overrides {
        data_dir: Some(dir.path().to_owned()),
        ..crate::config::Overrides::default()
    };
    let config = Config::load_from(None, [], &overrides).expect("config");
    let store = crate::store::embedded::EmbeddedStore::open(config.embedded()).expect("store");
    (AppState::new(Arc::new(store), config), dir)
}

/// The routes the service serves, as (path, methods), for the OpenAPI parity test.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["get", "head"]),
    ("/healthz", &["get", "head"]),
    ("/readyz", &["get", "head"]),
    ("/metrics", &["get", "head"]),
    ("/openapi.yaml", &["get", "head"]),
    ("/sources", &["get", "head"]),
    ("/sources/{id}", &["get", "head"]),
    ("/flows", &["get", "head"]),
    ("/flows/{id}", &["get", "head", "put", "delete"]),
    ("/flows/{id}/grains", &["get", "head", "post", "delete"]),
    (
        "/flows/{id}/grains/{timestamp}",
        &["get", "head", "put", "delete"],
    ),
    ("/events", &["get", "head"]),
];

/// The router's routes: each path with its handlers.
fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/", get(service::info)),
        ("/healthz", get(service::healthz)),
        ("/readyz", get(service::readyz)),
        ("/metrics", get(service::metrics)),
        ("/openapi.yaml", get(service::openapi)),
        ("/sources", get(sources::list)),
        ("/sources/{id}", get(sources::get_one)),
        ("/flows", get(flows::list)),
        (
            "/flows/{id}",
            put(flows::put_one)
                .get(flows::get_one)
                .delete(flows::delete_one),
        ),
        (
            "/flows/{id}/grains",
            get(grains::read)
                .post(grains::write)
                .delete(grains::delete_range),
        ),
        (
            direct::GRAIN_ROUTE,
            get(grains::get_one)
                .put(grains::put_one)
                .delete(grains::delete_one),
        ),
        ("/events", get(live::events)),
    ]
}

/// The paths the router serves, as it was built (their methods: each route's `Allow`).
pub fn routed_paths() -> Vec<&'static str> {
    routes().into_iter().map(|(path, _)| path).collect()
}

/// Builds the service: routes, handlers and the middleware stack.
pub fn router(state: AppState) -> direct::App {
    let routes = routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handlers)| {
            router.route(path, handlers)
        })
        .fallback(service::not_found)
        .method_not_allowed_fallback(service::method_not_allowed);
    middleware::stack(routes, state)
}
