//! Binding, serving and graceful shutdown.
