//! The store's tests, one binary: the conformance suite every backend passes
//! (`conformance`, instantiated by each backend's module), the embedded backend's own
//! tests, and the crash-safety test that kills a writer process.

mod conformance;
mod crash;
mod embedded;
mod helpers;
