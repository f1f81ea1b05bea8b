//! grainstore stores flows of media grains and serves them as time-addressed streams.
//!
//! The crate is laid out by concept, with dependencies pointing one way
//! (`api` → `store` → `grain`/`time`):
//!
//! - [`time`]: the `mediatimestamp` model — [`time::Timestamp`], [`time::TimeRange`],
//!   [`time::Rational`].
//! - [`grain`]: the `mediagrains` model of a grain (header and payload) and its JSON form.
//! - [`gsf`]: the Grain Sequence Format codec, an incremental decoder and a streaming encoder.
//! - [`config`]: the service's configuration (`config/default.toml`, environment, file).
//! - [`api`]: the HTTP service built on axum.
//! - [`server`]: binding, serving and graceful shutdown.
//! - [`logging`]: the service's log output.
//! - `client` (feature `client`, on by default): the `FlowProvider` API over HTTP — flow
//!   readers, live grain streams and writers.

pub mod api;
mod buffer;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub mod grain;
pub mod gsf;
pub mod logging;
pub mod server;
mod stall;
pub mod store;
pub mod time;
