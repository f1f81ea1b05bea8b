//! [`Grain`] and its header: the fields `mediagrains` 5.1.0 gives each grain type.

use bytes::Bytes;
use uuid::Uuid;

use super::GrainError;
use super::cog::{CogAudioFormat, CogFrameFormat, CogFrameLayout};
use super::event::EventPayload;
use crate::time::{Rational, Timestamp};

/// The six kinds of grain, named as `mediagrains` names them in `grain_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrainType {
    /// A grain with a header only (`"empty"`).
    Empty,
    /// A raw video frame (`"video"`).
    Video,
    /// A block of raw audio samples (`"audio"`).
    Audio,
    /// A compressed video frame (`"coded_video"`).
    CodedVideo,
    /// A block of compressed audio (`"coded_audio"`).
    CodedAudio,
    /// A data/event grain whose payload is a JSON document (`"event"`).
    Event,
}

impl GrainType {
    /// The `grain_type` string of the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            GrainType::Empty => "empty",
            GrainType::Video => "video",
            GrainType::Audio => "audio",
            GrainType::CodedVideo => "coded_video",
            GrainType::CodedAudio => "coded_audio",
            GrainType::Event => "event",
        }
    }

    /// Parses a `grain_type` string; `"data"` is `mediagrains`' other name for events.
    pub fn parse(s: &str) -> Option<GrainType> {
        Some(match s {
            "empty" => GrainType::Empty,
            "video" => GrainType::Video,
            "audio" => GrainType::Audio,
            "coded_video" => GrainType::CodedVideo,
            "coded_audio" => GrainType::CodedAudio,
            "event" | "data" => GrainType::Event,
            _ => return None,
        })
    }
}

impl std::fmt::Display for GrainType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SMPTE-style time label carried with a grain (`timelabels` in `mediagrains`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Timelabel {
    /// The label's name; at most 16 bytes of UTF-8 without NUL, as GSF stores it.
    pub tag: String,
    /// Frames since midnight (`frames_since_midnight`).
    pub count: u32,
    /// The frame rate the count is in (`frame_rate_numerator`/`frame_rate_denominator`).
    pub rate: Rational,
    /// Whether the count uses drop-frame counting.
    pub drop_frame: bool,
}

/// One plane (or packed plane) of a raw video frame (`cog_frame.components[]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VideoComponent {
    /// Bytes from the start of one line to the start of the next.
    pub stride: u32,
    /// Byte offset of the component in the payload. GSF does not carry it: a decoder
    /// derives it as the sum of the lengths of the components before.
    pub offset: u64,
    /// Samples per line.
    pub width: u32,
    /// Lines.
    pub height: u32,
    /// Total bytes of the component.
    pub length: u32,
}

/// The header of a raw video grain (`cog_frame`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VideoHeader {
    /// Pixel format.
    pub format: CogFrameFormat,
    /// Field/frame layout.
    pub layout: CogFrameLayout,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in lines.
    pub height: u32,
    /// Offset from the start of the payload to the picture data, usually 0.
    pub extension: u32,
    /// Source aspect ratio, if given (a zero ratio means "not given" in GSF).
    pub source_aspect_ratio: Option<Rational>,
    /// Pixel aspect ratio, if given.
    pub pixel_aspect_ratio: Option<Rational>,
    /// The planes of the frame.
    pub components: Vec<VideoComponent>,
}

/// The header of a raw audio grain (`cog_audio`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AudioHeader {
    /// Sample format.
    pub format: CogAudioFormat,
    /// Number of channels.
    pub channels: u16,
    /// Number of samples per channel in this grain.
    pub samples: u32,
    /// Samples per second.
    pub sample_rate: u32,
}

/// The header of a compressed video grain (`cog_coded_frame`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CodedVideoHeader {
    /// Coding format.
    pub format: CogFrameFormat,
    /// Field/frame layout.
    pub layout: CogFrameLayout,
    /// Width of the picture before coding.
    pub origin_width: u32,
    /// Height of the picture before coding.
    pub origin_height: u32,
    /// Width of the coded picture.
    pub coded_width: u32,
    /// Height of the coded picture.
    pub coded_height: u32,
    /// Whether this is a key frame; `None` when unknown (GSF v9 stores it as 3).
    pub is_key_frame: Option<bool>,
    /// Presentation offset in frames; `None` when unknown (GSF v9 stores `0x7fffffff`,
    /// so `Some(i32::MAX)` is normalised to `None`).
    pub temporal_offset: Option<i32>,
    /// Byte offsets of the coded units (e.g. NAL units) in the payload.
    pub unit_offsets: Vec<u32>,
    /// The `length` field of the JSON form; GSF does not carry it (decoders give 0).
    pub length: u64,
    /// Source aspect ratio of the JSON form; GSF does not carry it.
    pub source_aspect_ratio: Option<Rational>,
    /// Pixel aspect ratio of the JSON form; GSF does not carry it.
    pub pixel_aspect_ratio: Option<Rational>,
}

/// The header of a compressed audio grain (`cog_coded_audio`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodedAudioHeader {
    /// Coding format.
    pub format: CogAudioFormat,
    /// Number of channels.
    pub channels: u16,
    /// Number of samples per channel the grain decodes to.
    pub samples: u32,
    /// Encoder priming samples at the start.
    pub priming: u32,
    /// Padding samples at the end.
    pub remainder: u32,
    /// Samples per second.
    pub sample_rate: u32,
}

/// The type-specific part of a grain header.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GrainKind {
    /// No type-specific header.
    Empty,
    /// `cog_frame`.
    Video(VideoHeader),
    /// `cog_audio`.
    Audio(AudioHeader),
    /// `cog_coded_frame`.
    CodedVideo(CodedVideoHeader),
    /// `cog_coded_audio`.
    CodedAudio(CodedAudioHeader),
    /// An event grain: its `event_payload` is the JSON document in the payload bytes, so
    /// the header holds nothing of its own (see [`Grain::event_payload`]).
    Event,
}

impl GrainKind {
    /// The grain type this header belongs to.
    pub fn grain_type(&self) -> GrainType {
        match self {
            GrainKind::Empty => GrainType::Empty,
            GrainKind::Video(_) => GrainType::Video,
            GrainKind::Audio(_) => GrainType::Audio,
            GrainKind::CodedVideo(_) => GrainType::CodedVideo,
            GrainKind::CodedAudio(_) => GrainType::CodedAudio,
            GrainKind::Event => GrainType::Event,
        }
    }
}

/// Every header field of a grain: the common ones and the type-specific [`GrainKind`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrainHeader {
    /// The source the grain's flow belongs to.
    pub source_id: Uuid,
    /// The flow the grain belongs to.
    pub flow_id: Uuid,
    /// When the content was captured: the grain's key in its flow.
    pub origin_timestamp: Timestamp,
    /// The timestamp used for synchronisation, usually the origin timestamp.
    pub sync_timestamp: Timestamp,
    /// When the grain was created; GSF does not carry it, hence optional.
    pub creation_timestamp: Option<Timestamp>,
    /// Grains per second (0/1 when unknown).
    pub rate: Rational,
    /// Duration of the grain in seconds (0/1 when unknown).
    pub duration: Rational,
    /// Time labels, usually empty.
    pub timelabels: Vec<Timelabel>,
    /// The type-specific header.
    pub kind: GrainKind,
}

impl GrainHeader {
    /// A header of the given kind with sync = origin, no creation time, zero rate and
    /// duration and no time labels: the usual starting point of a builder-style literal.
    pub fn new(
        source_id: Uuid,
        flow_id: Uuid,
        origin_timestamp: Timestamp,
        kind: GrainKind,
    ) -> Self {
        GrainHeader {
            source_id,
            flow_id,
            origin_timestamp,
            sync_timestamp: origin_timestamp,
            creation_timestamp: None,
            rate: Rational::new(0, 1),
            duration: Rational::new(0, 1),
            timelabels: Vec::new(),
            kind,
        }
    }

    /// The grain type of this header.
    pub fn grain_type(&self) -> GrainType {
        self.kind.grain_type()
    }

    /// Brings the header into canonical form and checks that GSF can carry every field.
    ///
    /// Canonical form is what a GSF round trip yields, so that equality of grains means
    /// equality of what they say: rationals reduced (0/x as 0/1), zero aspect ratios as
    /// absent, a `temporal_offset` of `i32::MAX` as unknown.
    pub(crate) fn normalise(&mut self) -> Result<(), GrainError> {
        self.rate = canonical_rational("rate", self.rate)?;
        self.duration = canonical_rational("duration", self.duration)?;
        if self.timelabels.len() > usize::from(u16::MAX) {
            return Err(GrainError::invalid(
                "timelabels",
                "more than 65535 time labels",
            ));
        }
        for label in &mut self.timelabels {
            label.rate = canonical_rational("timelabels.rate", label.rate)?;
            if label.tag.len() > 16 || label.tag.contains('\0') {
                return Err(GrainError::invalid(
                    "timelabels.tag",
                    "a tag is at most 16 bytes of UTF-8 without NUL",
                ));
            }
        }
        match &mut self.kind {
            GrainKind::Video(video) => {
                video.source_aspect_ratio =
                    canonical_aspect("cog_frame.source_aspect_ratio", video.source_aspect_ratio)?;
                video.pixel_aspect_ratio =
                    canonical_aspect("cog_frame.pixel_aspect_ratio", video.pixel_aspect_ratio)?;
                if video.components.len() > usize::from(u16::MAX) {
                    return Err(GrainError::invalid(
                        "cog_frame.components",
                        "more than 65535 components",
                    ));
                }
            }
            GrainKind::CodedVideo(coded) => {
                coded.source_aspect_ratio = canonical_aspect(
                    "cog_coded_frame.source_aspect_ratio",
                    coded.source_aspect_ratio,
                )?;
                coded.pixel_aspect_ratio = canonical_aspect(
                    "cog_coded_frame.pixel_aspect_ratio",
                    coded.pixel_aspect_ratio,
                )?;
                if coded.temporal_offset == Some(i32::MAX) {
                    coded.temporal_offset = None;
                }
                if coded.unit_offsets.len() > usize::from(u16::MAX) {
                    return Err(GrainError::invalid(
                        "cog_coded_frame.unit_offsets",
                        "more than 65535 unit offsets",
                    ));
                }
            }
            GrainKind::Empty
            | GrainKind::Audio(_)
            | GrainKind::CodedAudio(_)
            | GrainKind::Event => {}
        }
        Ok(())
    }
}

/// Reduces a rational to lowest terms with a positive denominator; 0/x becomes 0/1.
/// Refuses what GSF cannot store (two unsigned 32-bit integers) and zero denominators.
pub(crate) fn canonical_rational(field: &'static str, r: Rational) -> Result<Rational, GrainError> {
    if r.denominator == 0 {
        return Err(GrainError::invalid(field, "denominator is zero"));
    }
    if r.numerator == 0 {
        return Ok(Rational::new(0, 1));
    }
    let (mut n, mut d) = (i128::from(r.numerator), i128::from(r.denominator));
    if d < 0 {
        n = -n;
        d = -d;
    }
    let g = gcd(n.unsigned_abs(), d.unsigned_abs()) as i128;
    n /= g;
    d /= g;
    let limit = i128::from(u32::MAX);
    if n < 0 || n > limit || d > limit {
        return Err(GrainError::invalid(
            field,
            "must be non-negative with numerator and denominator below 2^32",
        ));
    }
    // Both fit in u32 here, so in i64.
    Ok(Rational::new(n as i64, d as i64))
}

fn canonical_aspect(
    field: &'static str,
    r: Option<Rational>,
) -> Result<Option<Rational>, GrainError> {
    match r {
        None => Ok(None),
        // GSF writes an absent ratio as 0/0 and reads any zero ratio as absent.
        Some(r) if r.numerator == 0 => Ok(None),
        Some(r) => canonical_rational(field, r).map(Some),
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One grain: its header and its payload.
///
/// A `Grain` is always valid: [`Grain::new`] canonicalises the header, checks that GSF
/// can carry it, and checks an event grain's payload. Cloning is cheap: the payload is a
/// reference-counted [`Bytes`] and the header is small.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grain {
    header: GrainHeader,
    payload: Bytes,
}

/// The largest payload a grain may have: the GSF `grai` block size is a `u32` that must
/// also cover the block headers, so leave room for any header.
pub const MAX_PAYLOAD_LEN: usize = u32::MAX as usize - (1 << 20);

impl Grain {
    /// Builds a grain, canonicalising the header (see [`GrainHeader`]) and checking it.
    ///
    /// An event grain's payload must be empty or a `mediagrains` event document
    /// (`{"type": .., "topic": .., "data": [{"path": ..}, ..]}`).
    pub fn new(mut header: GrainHeader, payload: Bytes) -> Result<Grain, GrainError> {
        header.normalise()?;
        // The GSF grai block size (a u32) covers the headers and the payload.
        if payload.len() > MAX_PAYLOAD_LEN
            || super::wire::gbhd_size(&header) + 18 + payload.len() > u32::MAX as usize
        {
            return Err(GrainError::invalid(
                "data",
                "grain larger than GSF can carry",
            ));
        }
        if matches!(header.kind, GrainKind::Event) && !payload.is_empty() {
            EventPayload::validate(&payload)?;
        }
        Ok(Grain { header, payload })
    }

    /// Rebuilds a grain from parts taken apart from a valid grain (a store's record of
    /// a grain that passed [`Grain::new`] when written), skipping the checks: reads of
    /// millions of small grains should not re-validate what was validated at write.
    pub(crate) fn from_stored(header: GrainHeader, payload: Bytes) -> Grain {
        Grain { header, payload }
    }

    /// Builds an event grain whose payload is `event` serialised as `mediagrains` does.
    pub fn new_event(mut header: GrainHeader, event: &EventPayload) -> Result<Grain, GrainError> {
        header.kind = GrainKind::Event;
        Grain::new(header, event.to_python_json())
    }

    /// The whole header.
    pub fn header(&self) -> &GrainHeader {
        &self.header
    }

    /// The type-specific header.
    pub fn kind(&self) -> &GrainKind {
        &self.header.kind
    }

    /// The payload bytes (for events, the JSON document).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The grain type.
    pub fn grain_type(&self) -> GrainType {
        self.header.kind.grain_type()
    }

    /// The source id.
    pub fn source_id(&self) -> Uuid {
        self.header.source_id
    }

    /// The flow id.
    pub fn flow_id(&self) -> Uuid {
        self.header.flow_id
    }

    /// The origin timestamp: the grain's key in its flow.
    pub fn origin_timestamp(&self) -> Timestamp {
        self.header.origin_timestamp
    }

    /// The sync timestamp.
    pub fn sync_timestamp(&self) -> Timestamp {
        self.header.sync_timestamp
    }

    /// The creation timestamp, when known.
    pub fn creation_timestamp(&self) -> Option<Timestamp> {
        self.header.creation_timestamp
    }

    /// Sets the creation timestamp (a store sets it at first write when absent).
    pub fn set_creation_timestamp(&mut self, creation_timestamp: Option<Timestamp>) {
        self.header.creation_timestamp = creation_timestamp;
    }

    /// The grain rate (grains per second, 0/1 when unknown).
    pub fn rate(&self) -> Rational {
        self.header.rate
    }

    /// The grain duration in seconds (0/1 when unknown).
    pub fn duration(&self) -> Rational {
        self.header.duration
    }

    /// The time labels.
    pub fn timelabels(&self) -> &[Timelabel] {
        &self.header.timelabels
    }

    /// The parsed event document of an event grain; `None` for other grain types.
    ///
    /// An empty payload reads as the empty event, as in `mediagrains`.
    pub fn event_payload(&self) -> Option<Result<EventPayload, GrainError>> {
        match self.header.kind {
            GrainKind::Event if self.payload.is_empty() => Some(Ok(EventPayload::default())),
            GrainKind::Event => Some(EventPayload::parse(&self.payload)),
            _ => None,
        }
    }

    /// Whether `other` is the same grain for the purpose of an idempotent re-send: every
    /// header field and the payload bytes equal, except `creation_timestamp`.
    pub fn same_identity(&self, other: &Grain) -> bool {
        let a = &self.header;
        let b = &other.header;
        a.source_id == b.source_id
            && a.flow_id == b.flow_id
            && a.origin_timestamp == b.origin_timestamp
            && a.sync_timestamp == b.sync_timestamp
            && a.rate == b.rate
            && a.duration == b.duration
            && a.timelabels == b.timelabels
            && a.kind == b.kind
            && self.payload == other.payload
    }

    /// Splits the grain into its header and payload.
    pub fn into_parts(self) -> (GrainHeader, Bytes) {
        (self.header, self.payload)
    }
}
