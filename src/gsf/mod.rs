//! The Grain Sequence Format (`application/x-gsf`), the binary container of `mediagrains`.
//!
//! - [`GsfDecoder`]: incremental, fed with chunks as they arrive; reads versions 7, 8
//!   and 9, concatenated files, and reports malformed or truncated input with its byte
//!   offset.
//! - [`GsfEncoder`]: streaming, writes version 9 as `mediagrains` 5.1.0 does, as `Bytes`
//!   chunks that share the grains' payloads.
//! - [`GsfHead`]: the file metadata (id, created, tags, segments).
//!
//! The format is documented in `mediagrains`' `gsf_docs/gsf.md`; the per-grain header
//! (`gbhd`) codec is in the grain module, which the storage form of a header shares.

mod decoder;
mod encoder;
mod head;

pub use decoder::{DEFAULT_MAX_GRAIN_SIZE, DEFAULT_MAX_HEAD_SIZE, GsfDecoder, GsfEvent};
pub use encoder::{GrainChunks, GsfBlocks, GsfEncoder, encode_file, encode_grain};
pub use head::{GsfDateTime, GsfFlow, GsfHead, GsfSegment, GsfTag};

use crate::grain::GrainError;

/// Why GSF input could not be decoded, or a file not encoded.
#[derive(Debug, thiserror::Error)]
pub enum GsfError {
    /// The bytes at `offset` are not what GSF allows there.
    #[error("malformed gsf at byte {offset}: expected {expected}")]
    Malformed {
        /// Absolute byte offset in the input.
        offset: u64,
        /// What was expected there.
        expected: String,
    },
    /// The input ended inside a block (or before any file).
    #[error("truncated gsf: input ended at byte {offset}, expected {expected}")]
    Truncated {
        /// Absolute byte offset of the end of input.
        offset: u64,
        /// What was still expected.
        expected: String,
    },
    /// The file's major version is not 7, 8 or 9.
    #[error("unsupported gsf version {major}.{minor} at byte {offset} (7, 8 and 9 are supported)")]
    UnsupportedVersion {
        /// Offset of the version field.
        offset: u64,
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// A block declares a size over the decoder's limit; nothing was buffered for it.
    #[error("{what} at byte {offset} declares {declared} bytes, over the limit of {limit}")]
    TooLarge {
        /// Offset of the block.
        offset: u64,
        /// Which kind of block.
        what: &'static str,
        /// The declared size.
        declared: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A grain's header decoded but does not make a valid grain.
    #[error("invalid grain at byte {offset}: {source}")]
    InvalidGrain {
        /// Offset of the grain's `grai` block.
        offset: u64,
        /// Why the grain is invalid.
        #[source]
        source: GrainError,
    },
    /// The encoder was used wrongly (a segment missing, a head field too large, ...).
    #[error("cannot encode gsf: {0}")]
    Encode(String),
}

impl GsfError {
    /// The absolute byte offset of the problem in the input, for decoding errors.
    pub fn offset(&self) -> Option<u64> {
        match self {
            GsfError::Malformed { offset, .. }
            | GsfError::Truncated { offset, .. }
            | GsfError::UnsupportedVersion { offset, .. }
            | GsfError::TooLarge { offset, .. }
            | GsfError::InvalidGrain { offset, .. } => Some(*offset),
            GsfError::Encode(_) => None,
        }
    }
}
