//! The store's tests, one binary: the conformance suite every backend passes
//! (`conformance`, instantiated by each backend's module), the embedded backend's own
//! tests, the crash-safety test that kills a writer process, and the postgres backend's
//! tests against a real PostgreSQL and S3-compatible server.

mod conformance;
mod crash;
mod embedded;
mod helpers;
mod postgres;
