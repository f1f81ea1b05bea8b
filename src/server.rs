//! Binding, serving and graceful shutdown.
//!
//! [`Server::bind`] binds first, so that a caller (a test) can learn the port chosen for
//! `127.0.0.1:0` before anything is served; [`Server::run`] then serves until the
//! shutdown future completes and in-flight requests finish or the deadline passes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::{AuthMode, Backend, Config};
use crate::stall::StallTimeout;
use crate::store::embedded::EmbeddedStore;
use crate::store::postgres::PostgresStore;
use crate::store::{Store, StoreError};

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
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[source] StoreError),
}

/// A bound, not yet serving, grainstore service.
pub struct Server {
    listener: TcpListener,
    config: Config,
    state: AppState,
}

impl Server {
    /// Opens the store and binds the listen address. The data directory is made for the
    /// embedded backend here; the postgres backend keeps nothing locally but its object
    /// cache, if it has one, whose directory the store makes.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        if config.storage.backend == Backend::Embedded {
            std::fs::create_dir_all(&config.storage.data_dir).map_err(|source| {
                ServerError::DataDir {
                    path: config.storage.data_dir.clone(),
                    source,
                }
            })?;
        }
        let store = open_store(&config).await?;
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let state = AppState::new(store, config.clone());
        Ok(Server {
            listener,
            config,
            state,
        })
    }

    /// The address actually bound (the real port when the configuration said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.config.server.listen)
    }

    /// The shared state handlers see (for tests that inspect the store).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting and waits for open
    /// connections to finish, at most the configured deadline.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = self.local_addr();
        let deadline = self.config.server.shutdown_deadline();
        tracing::info!(
            %addr,
            data_dir = %self.config.storage.data_dir.display(),
            backend = self.state.store.backend_name(),
            "grainstore listening"
        );
        warn_if_open(&self.config, addr);
        let app = api::router(self.state.clone());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(
                self.config.server.header_read_timeout_ms,
            ));
        let send_stall = Duration::from_millis(self.config.server.send_stall_timeout_ms);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the
                        // connections we have and try again shortly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            let io = TokioIo::new(StallTimeout::new(stream, send_stall));
            let connection = builder.serve_connection_with_upgrades(io, service);
            let connection = graceful.watch(connection.into_owned());
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        tracing::info!(
            deadline_ms = deadline.as_millis() as u64,
            "shutting down: no new connections, draining open ones"
        );
        // Live streams end with a final event; uploads and reads in progress finish.
        self.state.shutdown.cancel();
        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(deadline) => {
                tracing::warn!(deadline_ms = deadline.as_millis() as u64, "shutdown deadline passed; closing remaining connections");
            }
        }
        Ok(())
    }
}

/// Warns loudly when the service takes requests from other machines without access
/// control: anyone who can reach the port can then read, write and delete every flow.
fn warn_if_open(config: &Config, addr: SocketAddr) {
    if config.auth.mode == AuthMode::None && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "ACCESS CONTROL IS OFF: auth.mode = \"none\" on a non-loopback address; anyone who \
             can reach this port can read, write and delete every flow. Set auth.mode to \
             \"token\" or \"jwt\" (see SECURITY.md), or listen on 127.0.0.1"
        );
    }
}

/// Opens the configured store (blocking work is kept off the async workers).
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    match config.storage.backend {
        Backend::Embedded => {
            let embedded = config.embedded();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(embedded))
                .await
                .map_err(|e| ServerError::Store(StoreError::Unavailable(e.to_string())))?
                .map_err(ServerError::Store)?;
            Ok(Arc::new(store))
        }
        Backend::Postgres => {
            let store = PostgresStore::open(config.postgres())
                .await
                .map_err(ServerError::Store)?;
            Ok(Arc::new(store))
        }
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
