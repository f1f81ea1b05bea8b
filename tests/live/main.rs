//! Live streams, one test binary: SSE subscriptions to a flow's grains (`sse`),
//! `follow=true` reads (`follow`), the service-wide `/events` stream (`events`), the
//! per-flow fan-out behind subscriptions (`fanout`),
//! exactness under stalled clients, reconnect storms and concurrent writers (`stress`),
//! and graceful shutdown with many open streams (`shutdown`). Each test runs its own
//! server on a free port with its own data directory.

mod events;
mod fanout;
mod follow;
mod helpers;
mod shutdown;
mod sse;
mod stress;
