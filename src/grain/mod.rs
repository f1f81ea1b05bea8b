//! The grain model of BBC's `mediagrains` 5.1.0: one time-stamped unit of media.
//!
//! - [`model`]: [`Grain`] (header + payload [`bytes::Bytes`]) and [`GrainHeader`] with
//!   every field `mediagrains` has, common and type-specific ([`GrainKind`]).
//! - [`cog`]: the Cog2 format enumerations, kept as raw values so that unknown ones
//!   survive round trips.
//! - [`event`]: the JSON document an event grain carries.
//! - [`json`]: the JSON form `{"meta": .., "data": base64}` ([`Grain::to_json`],
//!   [`Grain::from_json`]).
//! - `wire`: the binary header — the GSF `gbhd` block, shared with [`crate::gsf`], and
//!   the storage form ([`Grain::encode_header`], [`GrainHeader::decode`]).

use std::borrow::Cow;

pub mod cog;
pub mod event;
pub mod json;
pub mod model;
pub(crate) mod wire;

pub use cog::{CogAudioFormat, CogFrameFormat, CogFrameLayout};
pub use event::{EventDatum, EventPayload};
pub use json::GRAIN_NS;
pub use model::{
    AudioHeader, CodedAudioHeader, CodedVideoHeader, Grain, GrainHeader, GrainKind, GrainType,
    MAX_PAYLOAD_LEN, Timelabel, VideoComponent, VideoHeader,
};

/// Why a grain could not be built, parsed or decoded.
#[derive(Debug, thiserror::Error)]
pub enum GrainError {
    /// The JSON form is not valid JSON or a field has the wrong type or range
    /// (serde's message names the field, line and column).
    #[error("invalid grain json: {0}")]
    Json(#[source] serde_json::Error),
    /// A required field is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A field has a value the model (or GSF, which must be able to carry every grain)
    /// cannot hold.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, in the JSON form's naming.
        field: &'static str,
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },
    /// `grain_type` is not one of the six known types.
    #[error("unknown grain_type {0:?}")]
    UnknownGrainType(String),
    /// `data` is not standard, padded base64.
    #[error("invalid base64 in data: {0}")]
    Base64(#[source] base64::DecodeError),
    /// An event grain's payload is not a `mediagrains` event document.
    #[error("invalid event payload: {0}")]
    EventPayload(#[source] serde_json::Error),
    /// The binary (storage) form of a header is malformed.
    #[error("malformed grain header at byte {offset}: expected {expected}")]
    Binary {
        /// Byte offset in the header bytes.
        offset: u64,
        /// What was expected there.
        expected: String,
    },
}

impl GrainError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        GrainError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
