//! The client: the `FlowProvider` API of BBC's cloud media work, in Rust.
//!
//! ```no_run
//! # async fn demo(flow_id: uuid::Uuid) -> Result<(), grainstore::client::ClientError> {
//! use futures::StreamExt;
//! use grainstore::client::{FlowProvider, ProviderOptions, ReadConfig};
//!
//! let provider = FlowProvider::connect("http://127.0.0.1:8080", ProviderOptions::default())?;
//! let mut reader = provider.open_read(flow_id, ReadConfig::default()).await?;
//! let frames = reader.read(480).await?; // a bounded read; the next one continues after it
//! let mut grains = reader.grains(); // catches up, then follows live, for ever
//! while let Some(grain) = grains.next().await {
//!     let grain = grain?;
//!     // ...
//! }
//! provider.close().await;
//! # Ok(()) }
//! ```
//!
//! - [`FlowProvider`]: the connection (HTTP pool, credentials, retry policy); flow and
//!   source calls ([`flows`](self::flows)).
//! - [`FlowReader`] ([`read`](self::read)): bounded reads that continue where the last
//!   ended, range reads, and the endless live grain stream.
//! - [`FlowWriter`] ([`write`](self::write)): grains streamed into chunked GSF uploads.
//! - [`ClientError`] ([`error`](self::error)): every failure, with the server's
//!   problem document when it refused.

mod decode;
pub mod error;
pub mod flows;
mod http;
pub mod read;
mod sse;
pub mod write;

use std::sync::Arc;

pub use decode::GrainStream;
pub use error::{ClientError, ClientResult, Problem};
pub use flows::{FlowInfo, FlowQuery};
pub use http::{ProviderOptions, RetryPolicy};
pub use read::{FlowReader, ReadConfig, ReadStart};
pub use write::{FlowWriter, WriteConfig, WriteSummary};

pub use crate::store::{Flow, FlowId, Format, PutOutcome, Source, SourceId};

use http::Connection;

/// A connection to a grainstore service: its HTTP connection pool, credentials and
/// retry policy, shared by every reader and writer opened from it.
///
/// Cloning is cheap and shares the connection. [`close`](Self::close) ends it in order;
/// dropping the last clone ends live streams at once and releases the pool once the
/// readers and writers opened from it are gone.
#[derive(Clone)]
pub struct FlowProvider {
    conn: Arc<Connection>,
    /// Cancels live streams when the last clone of the provider goes away.
    _owner: Arc<CloseOnDrop>,
}

/// Cancels the connection's live work when dropped.
struct CloseOnDrop(tokio_util::sync::CancellationToken);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl FlowProvider {
    /// Connects to the service at `url` (`http://host:port`, optionally with a path
    /// prefix). Nothing is sent until the first call.
    pub fn connect(url: &str, options: ProviderOptions) -> ClientResult<FlowProvider> {
        let conn = Arc::new(Connection::new(url, &options)?);
        let owner = Arc::new(CloseOnDrop(conn.closed.clone()));
        Ok(FlowProvider {
            conn,
            _owner: owner,
        })
    }

    /// The connection, or `Closed`.
    pub(crate) fn connection(&self) -> ClientResult<&Connection> {
        if self.conn.closed.is_cancelled() {
            return Err(ClientError::Closed);
        }
        Ok(&self.conn)
    }

    /// Opens a reader of `flow`; fails at once when the flow does not exist.
    pub async fn open_read(&self, flow: FlowId, config: ReadConfig) -> ClientResult<FlowReader> {
        self.connection()?;
        FlowReader::open(self.conn.clone(), flow, config).await
    }

    /// Opens a writer of `flow` (nothing is sent before the first grain).
    pub fn open_write(&self, flow: FlowId, config: WriteConfig) -> ClientResult<FlowWriter> {
        self.connection()?;
        Ok(FlowWriter::new(self.conn.clone(), flow, config))
    }

    /// `GET /`: the service's name, version and storage backend.
    pub async fn service_info(&self) -> ClientResult<serde_json::Value> {
        let conn = self.connection()?;
        let response = conn.send(|| conn.request(reqwest::Method::GET, "")).await?;
        flows::json(response).await
    }

    /// Ends the provider in order: new calls fail with [`ClientError::Closed`], live
    /// streams end, and write requests in flight are waited for (at most
    /// [`ProviderOptions::close_timeout`]). Close writers first: a writer still open
    /// holds its request in flight.
    pub async fn close(self) {
        self.conn.close().await;
    }
}
