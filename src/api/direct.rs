//! The service as hyper sees it: the router, with the single-grain read beside it.
//!
//! `GET /flows/{id}/grains/{timestamp}` is the request a player or a monitor sends most
//! often, and for it the router is a large share of the work: matching the path,
//! percent-decoding and allocating its parameters into the request's extensions, and
//! boxing the route's service and future. A `GET` whose path has exactly that shape and
//! no percent-encoding is handed here straight to the middleware ([`Edge`]: request id,
//! span, metrics, load shedding, CORS, access control, deadline) and to the handler's own
//! code ([`grains::read_one`]), under the same route name; everything else, including
//! `HEAD` and percent-encoded paths, goes through the router, whose answers for this
//! route are the same: the last step the router adds to an answer (`Content-Length` for
//! a body of known size) is taken here too, and an integration test sends the same
//! requests both ways, over HTTP/1.1 and HTTP/2, and compares the answers.
//!
//! [`Edge`]: super::middleware::Edge

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use futures::future::Either;
use tower::Service;

use super::middleware::{EdgeShared, Route};
use super::params::parse_uuid;
use super::{ApiError, ApiResult, AppState, grains};

/// The route served here as well as by the router.
pub const GRAIN_ROUTE: &str = "/flows/{id}/grains/{timestamp}";

/// The whole HTTP service.
#[derive(Clone)]
pub struct App {
    router: Router,
    edge: Arc<EdgeShared>,
    state: AppState,
}

impl App {
    pub(super) fn new(router: Router, edge: Arc<EdgeShared>, state: AppState) -> App {
        App {
            router,
            edge,
            state,
        }
    }
}

type Direct = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<B> Service<axum::http::Request<B>> for App
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<RouteFuture<Infallible>, Direct>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready, and so is the direct path.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        if request.method() != Method::GET || grain_path(request.uri().path()).is_none() {
            return Either::Left(self.router.call(request));
        }
        let request = request.map(Body::new);
        let edge = self.edge.clone();
        let state = self.state.clone();
        let handler = tower::service_fn(move |request: Request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(get_one(state, request).await.into_response()) }
        });
        Either::Right(Box::pin(async move {
            let mut response = edge
                .handle(request, Route::Direct(GRAIN_ROUTE), handler)
                .await;
            set_content_length(&mut response);
            Ok(response)
        }))
    }
}

/// What the router does last to every answer of a `GET`: `Content-Length` for a body of
/// known size, unless set (hyper adds it for HTTP/1.1 anyway, but for HTTP/2 only when
/// the body is not empty).
fn set_content_length(response: &mut Response) {
    if response.headers().contains_key(header::CONTENT_LENGTH) {
        return;
    }
    if let Some(size) = response.body().size_hint().exact() {
        let mut text = itoa::Buffer::new();
        if let Ok(value) = HeaderValue::from_str(text.format(size)) {
            response.headers_mut().insert(header::CONTENT_LENGTH, value);
        }
    }
}

/// The flow id and timestamp of a path of the form `/flows/{id}/grains/{timestamp}`
/// with neither empty nor percent-encoded (such paths are the router's).
pub fn grain_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/flows/")?;
    if rest.as_bytes().contains(&b'%') {
        return None;
    }
    let (id, rest) = rest.split_once('/')?;
    let timestamp = rest.strip_prefix("grains/")?;
    let whole = !id.is_empty() && !timestamp.is_empty() && !timestamp.as_bytes().contains(&b'/');
    whole.then_some((id, timestamp))
}

/// What the router's `get(grains::get_one)` does for the same request: the flow's read
/// session (its errors first), then the read.
async fn get_one(state: AppState, request: Request) -> ApiResult<Response> {
    let Some((id, timestamp)) = grain_path(request.uri().path()) else {
        return Err(ApiError::internal(
            "the single-grain read was handed a path of another shape",
        ));
    };
    let flow = parse_uuid("flow id", id)?;
    let session = state.store.open_read(flow).await?;
    grains::read_one(
        &state,
        flow,
        session,
        timestamp,
        request.uri().query(),
        request.headers().get(header::ACCEPT),
    )
    .await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use futures::future::Either;
    use tower::Service;

    use super::grain_path;
    use crate::api::{router, test_state};

    #[tokio::test]
    async fn plain_gets_go_beside_the_router_and_the_rest_through_it() {
        let (state, _dir) = test_state();
        let mut app = router(state);
        let flow = "5a6b7c8d-0000-4000-8000-000000000001";
        let mut direct = |method: &str, path: &str| {
            let request = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .expect("request");
            matches!(app.call(request), Either::Right(_))
        };
        assert!(direct("GET", &format!("/flows/{flow}/grains/1:0")));
        assert!(direct(
            "GET",
            &format!("/flows/{flow}/grains/1:0?payload=none")
        ));
        assert!(direct("GET", &format!("http://h/flows/{flow}/grains/1:0")));
        assert!(!direct("GET", &format!("/flows/{flow}/grains/1%3A0")));
        assert!(!direct("HEAD", &format!("/flows/{flow}/grains/1:0")));
        assert!(!direct("PUT", &format!("/flows/{flow}/grains/1:0")));
        assert!(!direct("DELETE", &format!("/flows/{flow}/grains/1:0")));
        assert!(!direct("GET", &format!("/flows/{flow}/grains")));
        assert!(!direct("GET", "/flows"));
    }

    #[test]
    fn only_plain_single_grain_paths_are_taken() {
        assert_eq!(grain_path("/flows/abc/grains/1:0"), Some(("abc", "1:0")));
        for path in [
            "/flows/abc/grains",
            "/flows/abc/grains/",
            "/flows//grains/1:0",
            "/flows/abc/grains/1:0/",
            "/flows/abc/grains/1:0/x",
            "/flows/a%62c/grains/1:0",
            "/flows/abc/grains/1%3A0",
            "/flows/abc/grain/1:0",
            "/flows/abc",
            "//flows/abc/grains/1:0",
            "/sources/abc/grains/1:0",
        ] {
            assert_eq!(grain_path(path), None, "{path}");
        }
    }
}
