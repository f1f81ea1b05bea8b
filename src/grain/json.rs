//! The JSON form of a grain: `{"meta": <mediagrains metadata dict>, "data": <base64>}`.
//!
//! `meta` is exactly what `mediagrains` keeps in `grain.meta` (keys in its order),
//! so `mediagrains.GrainFactory(meta, base64decode(data))` rebuilds the grain, and the
//! `meta` of any `mediagrains` grain parses here. `data` is omitted when payloads are
//! not wanted; an event grain's document is always in `meta.grain.event_payload`.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::GrainError;
use super::cog::{CogAudioFormat, CogFrameFormat, CogFrameLayout};
use super::event::EventPayload;
use super::model::{
    AudioHeader, CodedAudioHeader, CodedVideoHeader, Grain, GrainHeader, GrainKind, GrainType,
    Timelabel, VideoComponent, VideoHeader,
};
use crate::time::{Rational, Timestamp};

/// The namespace `mediagrains` puts in every metadata dict.
pub const GRAIN_NS: &str = "urn:x-ipstudio:ns:0.1";

/// `#[serde(with = ...)]` helpers for a [`Timestamp`] as its `sec:nsec` string.
pub mod timestamp_str {
    use super::*;

    /// Writes `sec:nsec`.
    pub fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(ts)
    }

    /// Reads `sec:nsec` (with optional leading `-`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = ...)]` helpers for an optional [`Timestamp`] as a `sec:nsec` string.
pub mod option_timestamp_str {
    use super::*;

    /// Writes `sec:nsec`, or `null` when absent.
    pub fn serialize<S: Serializer>(ts: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => s.collect_str(ts),
            None => s.serialize_none(),
        }
    }

    /// Reads `sec:nsec` or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        match Option::<Cow<'de, str>>::deserialize(d)? {
            Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

// ---- writing -------------------------------------------------------------------------

#[derive(Serialize)]
struct MetaOut<'a> {
    #[serde(rename = "@_ns")]
    ns: &'static str,
    grain: HeaderOut<'a>,
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    grain_type: &'static str,
    source_id: &'a Uuid,
    flow_id: &'a Uuid,
    #[serde(with = "timestamp_str")]
    origin_timestamp: Timestamp,
    #[serde(with = "timestamp_str")]
    sync_timestamp: Timestamp,
    #[serde(with = "option_timestamp_str", skip_serializing_if = "Option::is_none")]
    creation_timestamp: Option<Timestamp>,
    rate: Rational,
    duration: Rational,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    timelabels: Vec<TimelabelOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cog_frame: Option<CogFrameOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cog_coded_frame: Option<CogCodedFrameOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cog_audio: Option<CogAudioOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cog_coded_audio: Option<CogCodedAudioOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_payload: Option<EventPayload>,
}

#[derive(Serialize)]
struct TimelabelOut<'a> {
    tag: &'a str,
    timelabel: TimelabelCount,
}

#[derive(Serialize, Deserialize)]
struct TimelabelCount {
    frames_since_midnight: u32,
    frame_rate_numerator: i64,
    frame_rate_denominator: i64,
    #[serde(default)]
    drop_frame: bool,
}

#[derive(Serialize, Deserialize)]
struct ComponentJson {
    stride: u32,
    offset: u64,
    width: u32,
    height: u32,
    length: u32,
}

#[derive(Serialize)]
struct CogFrameOut<'a> {
    format: u32,
    width: u32,
    height: u32,
    layout: u32,
    extension: u32,
    components: Vec<ComponentJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_aspect_ratio: &'a Option<Rational>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pixel_aspect_ratio: &'a Option<Rational>,
}

#[derive(Serialize)]
struct CogCodedFrameOut<'a> {
    format: u32,
    origin_width: u32,
    origin_height: u32,
    coded_width: u32,
    coded_height: u32,
    layout: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_key_frame: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temporal_offset: Option<i32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    unit_offsets: &'a [u32],
    length: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_aspect_ratio: &'a Option<Rational>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pixel_aspect_ratio: &'a Option<Rational>,
}

#[derive(Serialize)]
struct CogAudioOut {
    format: u32,
    samples: u32,
    channels: u16,
    sample_rate: u32,
}

#[derive(Serialize)]
struct CogCodedAudioOut {
    format: u32,
    samples: u32,
    channels: u16,
    priming: u32,
    remainder: u32,
    sample_rate: u32,
}

impl Grain {
    /// The JSON form of this grain (see the module docs), payload included or not.
    pub fn to_json(&self, include_payload: bool) -> Vec<u8> {
        let base64_len = if include_payload {
            self.payload().len().div_ceil(3) * 4
        } else {
            0
        };
        let mut out = Vec::with_capacity(512 + base64_len);
        self.write_json(include_payload, &mut out);
        out
    }

    /// Appends the JSON form of this grain to `out`; the payload is base64-encoded
    /// straight into it.
    pub fn write_json(&self, include_payload: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"meta\":");
        // Writing plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &self.meta_out());
        if include_payload {
            out.extend_from_slice(b",\"data\":\"");
            let start = out.len();
            let len = self.payload().len().div_ceil(3) * 4;
            out.resize(start + len, 0);
            let written = STANDARD
                .encode_slice(self.payload(), &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + written);
            out.push(b'"');
        }
        out.push(b'}');
    }

    /// The `meta` dict alone, as a JSON value (what `mediagrains` calls `grain.meta`).
    pub fn meta_json(&self) -> serde_json::Value {
        serde_json::to_value(self.meta_out()).unwrap_or_default()
    }

    fn meta_out(&self) -> MetaOut<'_> {
        let h = self.header();
        let mut out = HeaderOut {
            grain_type: h.grain_type().as_str(),
            source_id: &h.source_id,
            flow_id: &h.flow_id,
            origin_timestamp: h.origin_timestamp,
            sync_timestamp: h.sync_timestamp,
            creation_timestamp: h.creation_timestamp,
            rate: h.rate,
            duration: h.duration,
            timelabels: h
                .timelabels
                .iter()
                .map(|l| TimelabelOut {
                    tag: &l.tag,
                    timelabel: TimelabelCount {
                        frames_since_midnight: l.count,
                        frame_rate_numerator: l.rate.numerator,
                        frame_rate_denominator: l.rate.denominator,
                        drop_frame: l.drop_frame,
                    },
                })
                .collect(),
            cog_frame: None,
            cog_coded_frame: None,
            cog_audio: None,
            cog_coded_audio: None,
            event_payload: None,
        };
        match &h.kind {
            GrainKind::Empty => {}
            GrainKind::Video(v) => {
                out.cog_frame = Some(CogFrameOut {
                    format: v.format.0,
                    width: v.width,
                    height: v.height,
                    layout: v.layout.0,
                    extension: v.extension,
                    components: v
                        .components
                        .iter()
                        .map(|c| ComponentJson {
                            stride: c.stride,
                            offset: c.offset,
                            width: c.width,
                            height: c.height,
                            length: c.length,
                        })
                        .collect(),
                    source_aspect_ratio: &v.source_aspect_ratio,
                    pixel_aspect_ratio: &v.pixel_aspect_ratio,
                })
            }
            GrainKind::CodedVideo(c) => {
                out.cog_coded_frame = Some(CogCodedFrameOut {
                    format: c.format.0,
                    origin_width: c.origin_width,
                    origin_height: c.origin_height,
                    coded_width: c.coded_width,
                    coded_height: c.coded_height,
                    layout: c.layout.0,
                    is_key_frame: c.is_key_frame,
                    temporal_offset: c.temporal_offset,
                    unit_offsets: &c.unit_offsets,
                    length: c.length,
                    source_aspect_ratio: &c.source_aspect_ratio,
                    pixel_aspect_ratio: &c.pixel_aspect_ratio,
                })
            }
            GrainKind::Audio(a) => {
                out.cog_audio = Some(CogAudioOut {
                    format: a.format.0,
                    samples: a.samples,
                    channels: a.channels,
                    sample_rate: a.sample_rate,
                })
            }
            GrainKind::CodedAudio(a) => {
                out.cog_coded_audio = Some(CogCodedAudioOut {
                    format: a.format.0,
                    samples: a.samples,
                    channels: a.channels,
                    priming: a.priming,
                    remainder: a.remainder,
                    sample_rate: a.sample_rate,
                })
            }
            GrainKind::Event => {
                // A valid grain's event payload always parses (Grain::new checked it).
                out.event_payload = Some(
                    self.event_payload()
                        .and_then(Result::ok)
                        .unwrap_or_default(),
                )
            }
        }
        MetaOut {
            ns: GRAIN_NS,
            grain: out,
        }
    }
}

// ---- reading -------------------------------------------------------------------------

#[derive(Deserialize)]
struct GrainIn<'a> {
    meta: MetaIn,
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MetaIn {
    grain: HeaderIn,
}

/// Defaults follow what `mediagrains` fills in for a missing key, except that the origin
/// timestamp is required: `mediagrains` would use the current time, which would make a
/// grain's key depend on when it was parsed.
#[derive(Deserialize)]
struct HeaderIn {
    #[serde(default)]
    grain_type: Option<String>,
    #[serde(default)]
    source_id: Uuid,
    #[serde(default)]
    flow_id: Uuid,
    #[serde(default, with = "option_timestamp_str")]
    origin_timestamp: Option<Timestamp>,
    #[serde(default, with = "option_timestamp_str")]
    sync_timestamp: Option<Timestamp>,
    #[serde(default, with = "option_timestamp_str")]
    creation_timestamp: Option<Timestamp>,
    #[serde(default = "zero")]
    rate: Rational,
    #[serde(default = "zero")]
    duration: Rational,
    #[serde(default)]
    timelabels: Option<Vec<TimelabelIn>>,
    #[serde(default)]
    cog_frame: Option<CogFrameIn>,
    #[serde(default)]
    cog_coded_frame: Option<CogCodedFrameIn>,
    #[serde(default)]
    cog_audio: Option<CogAudioIn>,
    #[serde(default)]
    cog_coded_audio: Option<CogCodedAudioIn>,
    #[serde(default)]
    event_payload: Option<EventPayload>,
}

fn zero() -> Rational {
    Rational::new(0, 1)
}

#[derive(Deserialize)]
struct TimelabelIn {
    #[serde(default)]
    tag: String,
    timelabel: TimelabelCount,
}

fn unknown_format() -> u32 {
    CogFrameFormat::UNKNOWN.0
}

fn unknown_layout() -> u32 {
    CogFrameLayout::UNKNOWN.0
}

fn invalid_audio() -> u32 {
    CogAudioFormat::INVALID.0
}

fn rate_48k() -> u32 {
    48000
}

#[derive(Deserialize)]
struct CogFrameIn {
    #[serde(default = "unknown_format")]
    format: u32,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
    #[serde(default = "unknown_layout")]
    layout: u32,
    #[serde(default)]
    extension: u32,
    #[serde(default)]
    components: Vec<ComponentJson>,
    #[serde(default)]
    source_aspect_ratio: Option<Rational>,
    #[serde(default)]
    pixel_aspect_ratio: Option<Rational>,
}

#[derive(Deserialize)]
struct CogCodedFrameIn {
    #[serde(default = "unknown_format")]
    format: u32,
    #[serde(default = "unknown_layout")]
    layout: u32,
    #[serde(default)]
    origin_width: u32,
    #[serde(default)]
    origin_height: u32,
    #[serde(default)]
    coded_width: u32,
    #[serde(default)]
    coded_height: u32,
    #[serde(default)]
    is_key_frame: Option<bool>,
    #[serde(default)]
    temporal_offset: Option<i32>,
    #[serde(default)]
    unit_offsets: Option<Vec<u32>>,
    #[serde(default)]
    length: u64,
    #[serde(default)]
    source_aspect_ratio: Option<Rational>,
    #[serde(default)]
    pixel_aspect_ratio: Option<Rational>,
}

#[derive(Deserialize)]
struct CogAudioIn {
    #[serde(default = "invalid_audio")]
    format: u32,
    #[serde(default)]
    samples: u32,
    #[serde(default)]
    channels: u16,
    #[serde(default)]
    sample_rate: u32,
}

#[derive(Deserialize)]
struct CogCodedAudioIn {
    #[serde(default = "invalid_audio")]
    format: u32,
    #[serde(default)]
    samples: u32,
    #[serde(default)]
    channels: u16,
    #[serde(default)]
    priming: u32,
    #[serde(default)]
    remainder: u32,
    #[serde(default = "rate_48k")]
    sample_rate: u32,
}

impl Grain {
    /// Parses the JSON form (`{"meta": .., "data": ..}`); `data` may be absent or null.
    ///
    /// For an event grain, `data` (when present) is the payload and wins over
    /// `meta.grain.event_payload`, as in `mediagrains`; without `data` the payload is
    /// the `event_payload` document written as Python writes it.
    pub fn from_json(bytes: &[u8]) -> Result<Grain, GrainError> {
        let parsed: GrainIn<'_> = serde_json::from_slice(bytes).map_err(GrainError::Json)?;
        let payload = match &parsed.data {
            Some(data) => Some(Bytes::from(
                STANDARD
                    .decode(data.as_bytes())
                    .map_err(GrainError::Base64)?,
            )),
            None => None,
        };
        grain_from_meta(parsed.meta.grain, payload)
    }

    /// Builds a grain from a `mediagrains` metadata dict (`{"@_ns":.., "grain": {..}}`)
    /// and its payload, as `GrainFactory(meta, data)` does.
    pub fn from_meta(
        meta: &serde_json::Value,
        payload: Option<Bytes>,
    ) -> Result<Grain, GrainError> {
        let meta = MetaIn::deserialize(meta).map_err(GrainError::Json)?;
        grain_from_meta(meta.grain, payload)
    }
}

fn grain_from_meta(h: HeaderIn, payload: Option<Bytes>) -> Result<Grain, GrainError> {
    let grain_type = match h.grain_type.as_deref() {
        None => GrainType::Empty,
        Some(s) => GrainType::parse(s).ok_or_else(|| GrainError::UnknownGrainType(s.to_owned()))?,
    };
    let origin_timestamp = h
        .origin_timestamp
        .ok_or(GrainError::MissingField("origin_timestamp"))?;
    let mut payload = payload;
    let kind = match grain_type {
        GrainType::Empty => GrainKind::Empty,
        GrainType::Video => {
            let f = h.cog_frame.unwrap_or_else(|| CogFrameIn {
                format: unknown_format(),
                width: 0,
                height: 0,
                layout: unknown_layout(),
                extension: 0,
                components: Vec::new(),
                source_aspect_ratio: None,
                pixel_aspect_ratio: None,
            });
            GrainKind::Video(VideoHeader {
                format: CogFrameFormat(f.format),
                layout: CogFrameLayout(f.layout),
                width: f.width,
                height: f.height,
                extension: f.extension,
                source_aspect_ratio: f.source_aspect_ratio,
                pixel_aspect_ratio: f.pixel_aspect_ratio,
                components: f
                    .components
                    .into_iter()
                    .map(|c| VideoComponent {
                        stride: c.stride,
                        offset: c.offset,
                        width: c.width,
                        height: c.height,
                        length: c.length,
                    })
                    .collect(),
            })
        }
        GrainType::CodedVideo => {
            let c = h.cog_coded_frame.unwrap_or_else(|| CogCodedFrameIn {
                format: unknown_format(),
                layout: unknown_layout(),
                origin_width: 0,
                origin_height: 0,
                coded_width: 0,
                coded_height: 0,
                is_key_frame: None,
                temporal_offset: None,
                unit_offsets: None,
                length: 0,
                source_aspect_ratio: None,
                pixel_aspect_ratio: None,
            });
            GrainKind::CodedVideo(CodedVideoHeader {
                format: CogFrameFormat(c.format),
                layout: CogFrameLayout(c.layout),
                origin_width: c.origin_width,
                origin_height: c.origin_height,
                coded_width: c.coded_width,
                coded_height: c.coded_height,
                is_key_frame: c.is_key_frame,
                temporal_offset: c.temporal_offset,
                unit_offsets: c.unit_offsets.unwrap_or_default(),
                length: c.length,
                source_aspect_ratio: c.source_aspect_ratio,
                pixel_aspect_ratio: c.pixel_aspect_ratio,
            })
        }
        GrainType::Audio => {
            let a = h.cog_audio.unwrap_or(CogAudioIn {
                format: invalid_audio(),
                samples: 0,
                channels: 0,
                sample_rate: 0,
            });
            GrainKind::Audio(AudioHeader {
                format: CogAudioFormat(a.format),
                channels: a.channels,
                samples: a.samples,
                sample_rate: a.sample_rate,
            })
        }
        GrainType::CodedAudio => {
            let a = h.cog_coded_audio.unwrap_or(CogCodedAudioIn {
                format: invalid_audio(),
                samples: 0,
                channels: 0,
                priming: 0,
                remainder: 0,
                sample_rate: rate_48k(),
            });
            GrainKind::CodedAudio(CodedAudioHeader {
                format: CogAudioFormat(a.format),
                channels: a.channels,
                samples: a.samples,
                priming: a.priming,
                remainder: a.remainder,
                sample_rate: a.sample_rate,
            })
        }
        GrainType::Event => {
            if payload.is_none() {
                payload = Some(h.event_payload.unwrap_or_default().to_python_json());
            }
            GrainKind::Event
        }
    };
    let header = GrainHeader {
        source_id: h.source_id,
        flow_id: h.flow_id,
        origin_timestamp,
        sync_timestamp: h.sync_timestamp.unwrap_or(origin_timestamp),
        creation_timestamp: h.creation_timestamp,
        rate: h.rate,
        duration: h.duration,
        timelabels: h
            .timelabels
            .unwrap_or_default()
            .into_iter()
            .map(|l| Timelabel {
                tag: l.tag,
                count: l.timelabel.frames_since_midnight,
                rate: Rational::new(
                    l.timelabel.frame_rate_numerator,
                    l.timelabel.frame_rate_denominator,
                ),
                drop_frame: l.timelabel.drop_frame,
            })
            .collect(),
        kind,
    };
    Grain::new(header, payload.unwrap_or_default())
}
