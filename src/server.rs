//! Binding, serving and graceful shutdown.
//!
//! [`Server::bind`] binds first, so that a caller (a test) can learn the port chosen for
//! `127.0.0.1:0` before anything is served; [`Server::run`] then serves until the
//! shutdown future completes and in-flight requests finish or the deadline passes.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api;
use crate::config::Config;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory from the configuration.
        path: std::path::PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// A bound, not yet serving, grainstore service.
pub struct Server {
    listener: TcpListener,
    config: Config,
}

impl Server {
    /// Prepares the data directory and binds the listen address.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.storage.data_dir).map_err(|source| {
            ServerError::DataDir {
                path: config.storage.data_dir.clone(),
                source,
            }
        })?;
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Server { listener, config })
    }

    /// The address actually bound (the real port when the configuration said 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or(self.config.server.listen)
    }

    /// Serves until `shutdown` completes, then waits for in-flight requests up to the
    /// configured deadline.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let addr = self.local_addr();
        let deadline = self.config.server.shutdown_deadline();
        tracing::info!(%addr, data_dir = %self.config.storage.data_dir.display(), "grainstore listening");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serve = axum::serve(self.listener, api::router())
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down");
                let _ = stop_tx.send(true);
            })
            .into_future();
        let serving = tokio::spawn(serve);
        drain(serving, stop_rx, deadline).await
    }
}

/// Waits for the server task; once shutdown has begun, waits at most `deadline` more.
async fn drain(
    mut serving: tokio::task::JoinHandle<std::io::Result<()>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    deadline: Duration,
) -> Result<(), ServerError> {
    tokio::select! {
        result = &mut serving => return join_result(result),
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    match tokio::time::timeout(deadline, &mut serving).await {
        Ok(result) => join_result(result),
        Err(_) => {
            tracing::warn!(deadline_ms = deadline.as_millis() as u64, "shutdown deadline passed; closing remaining connections");
            serving.abort();
            Ok(())
        }
    }
}

fn join_result(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), ServerError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServerError::Serve(e)),
        Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
