//! The HTTP API tested through real requests: each test starts the server on a free port
//! with its own data directory (`helpers::spawn_app`) and talks to it with reqwest.
//! Set `TEST_LOG=1` to see the server's logs.
//!
//! The `interop` tests need a Python with mediagrains 5.1.0 in `GRAINSTORE_PYTHON` and
//! are ignored unless run with `--include-ignored`.

mod cors;
mod errors;
mod flows;
mod grains_delete;
mod grains_read;
mod grains_write;
mod helpers;
mod interop;
mod service;
mod sessions;
mod single_grain;
mod sources;
