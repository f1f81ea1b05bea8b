//! The Grain Sequence Format (`application/x-gsf`), the binary container of `mediagrains`.
