//! The connection a provider owns: the base URL, the HTTP pool with the credentials, the
//! retry policy, and the bookkeeping of work in flight that `close` waits for.

use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{ClientError, ClientResult, Problem};

/// How requests that fail for a passing reason (503 with `Retry-After`, a refused or
/// reset connection, a replica restarting) are tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests made at most for one call, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles with every retry.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts (also caps a server's `Retry-After`).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retries: every failure is reported at once.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (0 for the first): exponential with "full
    /// jitter" so that many clients refused together do not come back together, and
    /// never shorter than the server's `Retry-After`, capped by `max_backoff`.
    pub fn backoff(&self, retry: u32, retry_after: Option<u64>) -> Duration {
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        // Between half the ceiling and the ceiling: jittered, yet still growing.
        let jitter = RandomState::new().hash_one(retry) % 1000;
        let wait = ceiling / 2 + ceiling.mul_f64(jitter as f64 / 2000.0);
        match retry_after {
            Some(seconds) => wait
                .max(Duration::from_secs(seconds))
                .min(self.max_backoff.max(wait)),
            None => wait,
        }
    }
}

/// What a [`FlowProvider`](super::FlowProvider) is connected with.
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    /// A bearer token sent as `Authorization: Bearer TOKEN` on every request.
    pub token: Option<String>,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// How long [`FlowProvider::close`](super::FlowProvider::close) waits for writes in
    /// flight before it abandons them.
    pub close_timeout: Duration,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            token: None,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(30),
        }
    }
}

impl ProviderOptions {
    /// These options with a bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// These options with a retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// The shared core of a provider and everything opened from it.
pub(crate) struct Connection {
    /// The service's base URL, ending in `/` so that paths join below it.
    base: Url,
    /// The pool; it carries the credentials as default headers.
    pub(crate) http: reqwest::Client,
    pub(crate) retry: RetryPolicy,
    pub(crate) close_timeout: Duration,
    /// Cancelled by `close` (or the provider's drop): live streams and backoff waits end.
    pub(crate) closed: CancellationToken,
    /// Every write request in flight holds a clone; `close` drops the original and waits
    /// for the channel to close, i.e. for every write to finish (mini-redis' shutdown
    /// pattern). A std mutex: it is held for a clone, never across an await.
    in_flight: Mutex<Option<mpsc::Sender<()>>>,
    in_flight_done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

/// Held by a write request while it runs; see [`Connection::in_flight`].
pub(crate) type InFlight = mpsc::Sender<()>;

impl Connection {
    pub(crate) fn new(url: &str, options: &ProviderOptions) -> ClientResult<Connection> {
        let mut base = Url::parse(url).map_err(|e| {
            ClientError::InvalidInput(format!("service URL {url:?}: {e} (e.g. http://host:8080)"))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::InvalidInput(format!(
                "service URL {url:?} must be http:// or https://"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut headers = HeaderMap::new();
        if let Some(token) = &options.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ClientError::InvalidInput("the token holds characters a header cannot".into())
            })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("grainstore-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (in_flight, in_flight_done) = mpsc::channel(1);
        Ok(Connection {
            base,
            http,
            retry: options.retry.clone(),
            close_timeout: options.close_timeout,
            closed: CancellationToken::new(),
            in_flight: Mutex::new(Some(in_flight)),
            in_flight_done: tokio::sync::Mutex::new(in_flight_done),
        })
    }

    /// The URL of a service path (`flows/ID`), below the base URL.
    pub(crate) fn url(&self, path: &str) -> ClientResult<Url> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| ClientError::InvalidInput(format!("path {path:?}: {e}")))
    }

    /// A request to a service path.
    pub(crate) fn request(&self, method: Method, path: &str) -> ClientResult<RequestBuilder> {
        Ok(self.http.request(method, self.url(path)?))
    }

    /// A request to a service path with query parameters (added to any the path has).
    pub(crate) fn request_with<K: AsRef<str>, V: AsRef<str>>(
        &self,
        method: Method,
        path: &str,
        query: &[(K, V)],
    ) -> ClientResult<RequestBuilder> {
        let mut url = self.url(path)?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name.as_ref(), value.as_ref());
            }
        }
        Ok(self.http.request(method, url))
    }

    /// A guard for a write request in flight, or `Closed`.
    pub(crate) fn in_flight(&self) -> ClientResult<InFlight> {
        let guard = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        guard.clone().ok_or(ClientError::Closed)
    }

    /// Sends a request built by `build` (called again for every attempt), retrying
    /// passing failures with backoff; a non-2xx answer becomes [`ClientError::Problem`].
    pub(crate) async fn send(
        &self,
        build: impl Fn() -> ClientResult<RequestBuilder>,
    ) -> ClientResult<Response> {
        let mut attempt = 0u32;
        loop {
            if self.closed.is_cancelled() {
                return Err(ClientError::Closed);
            }
            attempt += 1;
            let result = match build()?.send().await {
                Ok(response) => check(response).await,
                Err(e) => Err(ClientError::Transport(e)),
            };
            match result {
                Ok(response) => return Ok(response),
                Err(e) if e.is_retryable() && attempt < self.retry.max_attempts => {
                    let wait = self.retry.backoff(attempt - 1, e.retry_after());
                    tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "request failed; retrying");
                    self.pause(wait).await?;
                }
                Err(e) if e.is_retryable() && attempt > 1 => {
                    return Err(ClientError::Unavailable {
                        attempts: attempt,
                        last: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sleeps, unless the provider is closed meanwhile.
    pub(crate) async fn pause(&self, wait: Duration) -> ClientResult<()> {
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.closed.cancelled() => Err(ClientError::Closed),
        }
    }

    /// Ends the connection in order: no new requests, live streams end, writes in
    /// flight finish (at most `close_timeout`).
    pub(crate) async fn close(&self) {
        self.closed.cancel();
        drop(
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let mut done = self.in_flight_done.lock().await;
        if tokio::time::timeout(self.close_timeout, done.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_ms = self.close_timeout.as_millis() as u64,
                "flow provider closed with writes still in flight; close the writers first"
            );
        }
    }
}

/// Turns a non-2xx response into [`ClientError::Problem`] with its problem document.
pub(crate) async fn check(response: Response) -> ClientResult<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // A problem document is small; a broken body still yields a problem from the status.
    let body = response.bytes().await.unwrap_or_default();
    Err(ClientError::Problem(Box::new(Problem::parse(
        status.as_u16(),
        &body,
        retry_after,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        };
        let first = policy.backoff(0, None);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let late = policy.backoff(9, None);
        assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        assert!(policy.backoff(0, Some(1)) >= Duration::from_secs(1));
        assert!(policy.backoff(0, Some(60)) <= Duration::from_secs(2));
    }
}
