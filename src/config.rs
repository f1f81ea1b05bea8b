//! The service's configuration.
