//! The binary grain header: the GSF `gbhd` block, and the storage form built on it.
//!
//! The `gbhd` codec lives with the grain model rather than in [`crate::gsf`] because the
//! storage form of a header ([`Grain::encode_header`]) reuses it; the GSF codec calls it.
//!
//! All integers are little-endian, as in GSF. A `gbhd` block (version 9) is:
//!
//! ```text
//! "gbhd" u32 size | source_id 16 | flow_id 16 | origin ts 11 | sync ts 11
//!                 | rate u32/u32 | duration u32/u32 | child blocks ("tils", one of
//!                   "vghd" (child "comp"), "cghd" (child "unof"), "aghd", "cahd", "eghd")
//! ts (v8, v9) = u8 sign (1: not negative) | u48 seconds | u32 nanoseconds
//! ```
//!
//! Version 7 has 16 unused bytes after flow_id and timestamps without the sign byte.

use std::borrow::Cow;

use uuid::Uuid;

use super::GrainError;
use super::cog::{CogAudioFormat, CogFrameFormat, CogFrameLayout};
use super::model::{
    AudioHeader, CodedAudioHeader, CodedVideoHeader, Grain, GrainHeader, GrainKind, Timelabel,
    VideoComponent, VideoHeader, canonical_rational,
};
use crate::time::{Rational, Timestamp};

/// A malformed binary header: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError {
    /// Absolute byte offset (in the caller's stream) of the problem.
    pub offset: u64,
    /// What the bytes there should have been.
    pub expected: Cow<'static, str>,
}

/// A bounds-checked little-endian reader over one block's bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Absolute offset of `buf[0]`, for error positions.
    base: u64,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], base: u64) -> Self {
        Reader { buf, pos: 0, base }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn error(&self, expected: impl Into<Cow<'static, str>>) -> WireError {
        WireError {
            offset: self.offset(),
            expected: expected.into(),
        }
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(self.error(format!(
                "{what} ({n} bytes) but the enclosing block has {} left",
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    fn u48(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b: [u8; 6] = self.array(what)?;
        let mut full = [0u8; 8];
        full[..6].copy_from_slice(&b);
        Ok(u64::from_le_bytes(full))
    }

    pub(crate) fn uuid(&mut self, what: &'static str) -> Result<Uuid, WireError> {
        Ok(Uuid::from_bytes(self.array(what)?))
    }

    /// A UTF-8 string of `n` bytes, NUL padding removed.
    pub(crate) fn string(&mut self, n: usize, what: &'static str) -> Result<String, WireError> {
        let at = self.offset();
        let raw = self.bytes(n, what)?;
        let s = std::str::from_utf8(raw).map_err(|_| WireError {
            offset: at,
            expected: format!("{what} in UTF-8").into(),
        })?;
        // GSF pads fixed-size strings with NULs; mediagrains strips trailing ones and
        // reads a string starting with NUL as empty.
        let s = s.trim_end_matches('\0');
        Ok(if s.starts_with('\0') {
            String::new()
        } else {
            s.to_owned()
        })
    }

    /// A string prefixed by its `u16` length (GSF "varstring").
    pub(crate) fn varstring(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = self.u16(what)?;
        self.string(usize::from(n), what)
    }

    fn rational(&mut self, what: &'static str) -> Result<Rational, WireError> {
        let numerator = self.u32(what)?;
        let denominator = self.u32(what)?;
        // mediagrains reads a zero numerator or denominator as 0, and reduces.
        if numerator == 0 || denominator == 0 {
            return Ok(Rational::new(0, 1));
        }
        canonical_rational(what, Rational::new(numerator.into(), denominator.into()))
            .map_err(|e| self.error(e.to_string()))
    }

    fn timestamp(&mut self, major: u16, what: &'static str) -> Result<Timestamp, WireError> {
        let negative = if major == 7 {
            false
        } else {
            self.u8(what)? == 0
        };
        let at = self.offset();
        let secs = self.u48(what)?;
        let nanos = self.u32(what)?;
        Timestamp::from_parts(negative, secs, nanos).map_err(|_| WireError {
            offset: at,
            expected: format!("{what} with nanoseconds below 10^9").into(),
        })
    }

    /// The next child block (tag and a reader over its body), `None` when the parent is
    /// exhausted. A parent with 1 to 7 bytes left, or a child that does not fit, is an error.
    pub(crate) fn child(
        &mut self,
        parent: &'static str,
    ) -> Result<Option<([u8; 4], Reader<'a>)>, WireError> {
        if self.remaining() == 0 {
            return Ok(None);
        }
        if self.remaining() < 8 {
            return Err(self.error(format!(
                "a child block header (8 bytes) in '{parent}', found a partial block of {} bytes",
                self.remaining()
            )));
        }
        let start = self.offset();
        let tag: [u8; 4] = self.array("block tag")?;
        let size = self.u32("block size")? as usize;
        if size < 8 {
            return Err(WireError {
                offset: start,
                expected: format!("a block size of at least 8 in '{parent}', found {size}").into(),
            });
        }
        if size - 8 > self.remaining() {
            return Err(WireError {
                offset: start,
                expected: format!(
                    "a child block that fits in '{parent}' ({} bytes left), found size {size}",
                    self.remaining() + 8
                )
                .into(),
            });
        }
        let body_base = self.offset();
        let body = self.bytes(size - 8, "block body")?;
        Ok(Some((tag, Reader::new(body, body_base))))
    }
}

/// A `gbhd` block without child blocks: tag and size, two ids, two timestamps, two
/// rationals.
const GBHD_FIXED: usize = 8 + 16 + 16 + 11 + 11 + 8 + 8;

/// Size in bytes of the `gbhd` block GSF version 9 writes for `h`, its header included.
pub(crate) fn gbhd_size(h: &GrainHeader) -> usize {
    let mut size = GBHD_FIXED;
    if !h.timelabels.is_empty() {
        size += 10 + 29 * h.timelabels.len();
    }
    size += match &h.kind {
        GrainKind::Empty => 0,
        GrainKind::Video(v) => {
            44 + if v.components.is_empty() {
                0
            } else {
                10 + 16 * v.components.len()
            }
        }
        GrainKind::CodedVideo(c) => {
            37 + if c.unit_offsets.is_empty() {
                0
            } else {
                10 + 4 * c.unit_offsets.len()
            }
        }
        GrainKind::Audio(_) => 22,
        GrainKind::CodedAudio(_) => 30,
        GrainKind::Event => 9,
    };
    size
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Writes a block size; callers only pass sizes bounded by [`Grain::new`]'s checks.
fn put_size(out: &mut Vec<u8>, size: usize) {
    put_u32(out, u32::try_from(size).unwrap_or(u32::MAX));
}

pub(crate) fn put_timestamp(out: &mut Vec<u8>, ts: Timestamp) {
    let (negative, secs, nanos) = ts.to_parts();
    out.push(u8::from(!negative));
    out.extend_from_slice(&secs.to_le_bytes()[..6]);
    put_u32(out, nanos);
}

/// Writes a rational of a validated grain: [`Grain::new`] guarantees both parts fit.
fn put_rational(out: &mut Vec<u8>, r: Rational) {
    put_u32(out, u32::try_from(r.numerator).unwrap_or(0));
    put_u32(out, u32::try_from(r.denominator).unwrap_or(0));
}

fn put_aspect(out: &mut Vec<u8>, r: Option<Rational>) {
    // mediagrains writes an absent ratio as 0/1.
    put_rational(out, r.unwrap_or(Rational::new(0, 1)));
}

/// Appends the version 9 `gbhd` block of a (validated) header, as `mediagrains` writes it.
pub(crate) fn write_gbhd(h: &GrainHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(b"gbhd");
    put_size(out, gbhd_size(h));
    out.extend_from_slice(h.source_id.as_bytes());
    out.extend_from_slice(h.flow_id.as_bytes());
    put_timestamp(out, h.origin_timestamp);
    put_timestamp(out, h.sync_timestamp);
    put_rational(out, h.rate);
    put_rational(out, h.duration);
    if !h.timelabels.is_empty() {
        out.extend_from_slice(b"tils");
        put_size(out, 10 + 29 * h.timelabels.len());
        put_u16(out, h.timelabels.len() as u16);
        for label in &h.timelabels {
            let mut tag = [0u8; 16];
            let n = label.tag.len().min(16);
            tag[..n].copy_from_slice(&label.tag.as_bytes()[..n]);
            out.extend_from_slice(&tag);
            put_u32(out, label.count);
            put_rational(out, label.rate);
            out.push(u8::from(label.drop_frame));
        }
    }
    match &h.kind {
        GrainKind::Empty => {}
        GrainKind::Video(v) => {
            out.extend_from_slice(b"vghd");
            let comp_size = if v.components.is_empty() {
                0
            } else {
                10 + 16 * v.components.len()
            };
            put_size(out, 44 + comp_size);
            put_u32(out, v.format.0);
            put_u32(out, v.layout.0);
            put_u32(out, v.width);
            put_u32(out, v.height);
            put_u32(out, v.extension);
            put_aspect(out, v.source_aspect_ratio);
            put_aspect(out, v.pixel_aspect_ratio);
            if !v.components.is_empty() {
                out.extend_from_slice(b"comp");
                put_size(out, comp_size);
                put_u16(out, v.components.len() as u16);
                for c in &v.components {
                    put_u32(out, c.width);
                    put_u32(out, c.height);
                    put_u32(out, c.stride);
                    put_u32(out, c.length);
                }
            }
        }
        GrainKind::CodedVideo(c) => {
            out.extend_from_slice(b"cghd");
            let unof_size = if c.unit_offsets.is_empty() {
                0
            } else {
                10 + 4 * c.unit_offsets.len()
            };
            put_size(out, 37 + unof_size);
            put_u32(out, c.format.0);
            put_u32(out, c.layout.0);
            put_u32(out, c.origin_width);
            put_u32(out, c.origin_height);
            put_u32(out, c.coded_width);
            put_u32(out, c.coded_height);
            out.push(c.is_key_frame.map_or(3, u8::from));
            out.extend_from_slice(&c.temporal_offset.unwrap_or(i32::MAX).to_le_bytes());
            if !c.unit_offsets.is_empty() {
                out.extend_from_slice(b"unof");
                put_size(out, unof_size);
                put_u16(out, c.unit_offsets.len() as u16);
                for offset in &c.unit_offsets {
                    put_u32(out, *offset);
                }
            }
        }
        GrainKind::Audio(a) => {
            out.extend_from_slice(b"aghd");
            put_size(out, 22);
            put_u32(out, a.format.0);
            put_u16(out, a.channels);
            put_u32(out, a.samples);
            put_u32(out, a.sample_rate);
        }
        GrainKind::CodedAudio(a) => {
            out.extend_from_slice(b"cahd");
            put_size(out, 30);
            put_u32(out, a.format.0);
            put_u16(out, a.channels);
            put_u32(out, a.samples);
            put_u32(out, a.priming);
            put_u32(out, a.remainder);
            put_u32(out, a.sample_rate);
        }
        GrainKind::Event => {
            out.extend_from_slice(b"eghd");
            put_size(out, 9);
            out.push(0);
        }
    }
}

/// Reads the body of a `gbhd` block (after its 8-byte block header) of GSF version `major`.
///
/// Unknown child blocks are skipped, as `mediagrains` does. The header is not yet
/// canonical; [`Grain::new`] makes it so. `creation_timestamp` is `None`.
pub(crate) fn read_gbhd(r: &mut Reader<'_>, major: u16) -> Result<GrainHeader, WireError> {
    let source_id = r.uuid("source_id")?;
    let flow_id = r.uuid("flow_id")?;
    if major == 7 {
        r.bytes(16, "16 reserved bytes of a version 7 gbhd")?;
    }
    let origin_timestamp = r.timestamp(major, "origin_timestamp")?;
    let sync_timestamp = r.timestamp(major, "sync_timestamp")?;
    let rate = r.rational("rate")?;
    let duration = r.rational("duration")?;
    let mut header = GrainHeader {
        source_id,
        flow_id,
        origin_timestamp,
        sync_timestamp,
        creation_timestamp: None,
        rate,
        duration,
        timelabels: Vec::new(),
        kind: GrainKind::Empty,
    };
    while let Some((tag, mut child)) = r.child("gbhd")? {
        match &tag {
            b"tils" => header.timelabels = read_tils(&mut child)?,
            b"vghd" => header.kind = GrainKind::Video(read_vghd(&mut child)?),
            b"cghd" => header.kind = GrainKind::CodedVideo(read_cghd(&mut child, major)?),
            b"aghd" => {
                header.kind = GrainKind::Audio(AudioHeader {
                    format: CogAudioFormat(child.u32("cog_audio.format")?),
                    channels: child.u16("cog_audio.channels")?,
                    samples: child.u32("cog_audio.samples")?,
                    sample_rate: child.u32("cog_audio.sample_rate")?,
                })
            }
            b"cahd" => {
                header.kind = GrainKind::CodedAudio(CodedAudioHeader {
                    format: CogAudioFormat(child.u32("cog_coded_audio.format")?),
                    channels: child.u16("cog_coded_audio.channels")?,
                    samples: child.u32("cog_coded_audio.samples")?,
                    priming: child.u32("cog_coded_audio.priming")?,
                    remainder: child.u32("cog_coded_audio.remainder")?,
                    sample_rate: child.u32("cog_coded_audio.sample_rate")?,
                })
            }
            b"eghd" => header.kind = GrainKind::Event,
            _ => {}
        }
    }
    Ok(header)
}

fn read_tils(r: &mut Reader<'_>) -> Result<Vec<Timelabel>, WireError> {
    let count = r.u16("time label count")?;
    let mut labels = Vec::with_capacity(usize::from(count).min(r.remaining() / 29));
    for _ in 0..count {
        labels.push(Timelabel {
            tag: r.string(16, "time label tag")?,
            count: r.u32("time label count")?,
            rate: r.rational("time label rate")?,
            drop_frame: r.u8("time label drop_frame")? != 0,
        });
    }
    Ok(labels)
}

fn read_vghd(r: &mut Reader<'_>) -> Result<VideoHeader, WireError> {
    let format = CogFrameFormat(r.u32("cog_frame.format")?);
    let layout = CogFrameLayout(r.u32("cog_frame.layout")?);
    let width = r.u32("cog_frame.width")?;
    let height = r.u32("cog_frame.height")?;
    let extension = r.u32("cog_frame.extension")?;
    let sar = r.rational("cog_frame.source_aspect_ratio")?;
    let par = r.rational("cog_frame.pixel_aspect_ratio")?;
    let mut components = Vec::new();
    while let Some((tag, mut comp)) = r.child("vghd")? {
        if &tag != b"comp" {
            continue;
        }
        // A later "comp" replaces an earlier one, as in mediagrains.
        let count = comp.u16("component count")?;
        components = Vec::with_capacity(usize::from(count).min(comp.remaining() / 16));
        let mut offset = 0u64;
        for _ in 0..count {
            let width = comp.u32("component width")?;
            let height = comp.u32("component height")?;
            let stride = comp.u32("component stride")?;
            let length = comp.u32("component length")?;
            components.push(VideoComponent {
                stride,
                offset,
                width,
                height,
                length,
            });
            offset += u64::from(length);
        }
    }
    Ok(VideoHeader {
        format,
        layout,
        width,
        height,
        extension,
        source_aspect_ratio: (sar.numerator != 0).then_some(sar),
        pixel_aspect_ratio: (par.numerator != 0).then_some(par),
        components,
    })
}

fn read_cghd(r: &mut Reader<'_>, major: u16) -> Result<CodedVideoHeader, WireError> {
    let format = CogFrameFormat(r.u32("cog_coded_frame.format")?);
    let layout = CogFrameLayout(r.u32("cog_coded_frame.layout")?);
    let origin_width = r.u32("cog_coded_frame.origin_width")?;
    let origin_height = r.u32("cog_coded_frame.origin_height")?;
    let coded_width = r.u32("cog_coded_frame.coded_width")?;
    let coded_height = r.u32("cog_coded_frame.coded_height")?;
    let key = r.u8("cog_coded_frame.is_key_frame")?;
    let temporal_offset = r.i32("cog_coded_frame.temporal_offset")?;
    // Before version 9 both were always known; version 9 marks unknown with 3 (any
    // value above 1) and 0x7fffffff.
    let (is_key_frame, temporal_offset) = if major < 9 {
        (Some(key != 0), Some(temporal_offset))
    } else {
        (
            (key <= 1).then_some(key == 1),
            (temporal_offset != i32::MAX).then_some(temporal_offset),
        )
    };
    let mut unit_offsets = Vec::new();
    while let Some((tag, mut unof)) = r.child("cghd")? {
        if &tag != b"unof" {
            continue;
        }
        let count = unof.u16("unit offset count")?;
        unit_offsets = Vec::with_capacity(usize::from(count).min(unof.remaining() / 4));
        for _ in 0..count {
            unit_offsets.push(unof.u32("unit offset")?);
        }
    }
    Ok(CodedVideoHeader {
        format,
        layout,
        origin_width,
        origin_height,
        coded_width,
        coded_height,
        is_key_frame,
        temporal_offset,
        unit_offsets,
        length: 0,
        source_aspect_ratio: None,
        pixel_aspect_ratio: None,
    })
}

/// Version of the storage form written by [`Grain::encode_header`].
const STORAGE_VERSION: u8 = 1;
/// Storage flag: a creation timestamp follows the two leading bytes.
const HAS_CREATION: u8 = 1;

impl Grain {
    /// Appends the compact binary form of this grain's header, for storage beside the
    /// payload (which it does not contain).
    ///
    /// The form is:
    ///
    /// ```text
    /// u8 version (1) | u8 flags (bit 0: creation timestamp present)
    /// | u8 number of extension blocks (so that a cut between blocks is detected)
    /// | [creation timestamp, 11 bytes as in GSF v9: u8 sign, u48 secs, u32 nanos]
    /// | the GSF version 9 "gbhd" block, exactly as in a GSF file
    /// | extension blocks (tag, u32 size incl. 8-byte header, body) for the fields of the
    ///   JSON form that GSF does not carry, each only when not the default:
    ///   "xcvl" u64 cog_coded_frame.length, "xcsr"/"xcpr" u32/u32 coded source/pixel
    ///   aspect ratio, "xvof" u16 n + n x u64 component offsets (when they are not the
    ///   running sum of the component lengths, which is what GSF implies)
    /// ```
    ///
    /// [`GrainHeader::decode`] reads it back; `Grain::new(header, payload)` rebuilds the grain.
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        self.encode_header_created(self.header().creation_timestamp, out);
    }

    /// Like [`Grain::encode_header`], with `creation_timestamp` in place of the grain's
    /// own (a store stamps grains at first write without copying them).
    pub fn encode_header_created(&self, creation_timestamp: Option<Timestamp>, out: &mut Vec<u8>) {
        let h = &self.header();
        out.reserve(3 + 11 + gbhd_size(h));
        out.push(STORAGE_VERSION);
        out.push(if creation_timestamp.is_some() {
            HAS_CREATION
        } else {
            0
        });
        let count_at = out.len();
        out.push(0);
        if let Some(ts) = creation_timestamp {
            put_timestamp(out, ts);
        }
        write_gbhd(h, out);
        let mut extensions = 0u8;
        match &h.kind {
            GrainKind::CodedVideo(c) => {
                if c.length != 0 {
                    extensions += 1;
                    out.extend_from_slice(b"xcvl");
                    put_u32(out, 16);
                    out.extend_from_slice(&c.length.to_le_bytes());
                }
                if let Some(r) = c.source_aspect_ratio {
                    extensions += 1;
                    out.extend_from_slice(b"xcsr");
                    put_u32(out, 16);
                    put_rational(out, r);
                }
                if let Some(r) = c.pixel_aspect_ratio {
                    extensions += 1;
                    out.extend_from_slice(b"xcpr");
                    put_u32(out, 16);
                    put_rational(out, r);
                }
            }
            GrainKind::Video(v) if !has_implied_offsets(&v.components) => {
                extensions += 1;
                out.extend_from_slice(b"xvof");
                put_size(out, 10 + 8 * v.components.len());
                put_u16(out, v.components.len() as u16);
                for c in &v.components {
                    out.extend_from_slice(&c.offset.to_le_bytes());
                }
            }
            _ => {}
        }
        out[count_at] = extensions;
    }
}

/// Whether component offsets are the running sum of lengths, as a GSF decoder makes them.
pub(crate) fn has_implied_offsets(components: &[VideoComponent]) -> bool {
    let mut offset = 0u64;
    components.iter().all(|c| {
        let ok = c.offset == offset;
        offset += u64::from(c.length);
        ok
    })
}

impl GrainHeader {
    /// Reads the storage form written by [`Grain::encode_header`]; strict: trailing or
    /// unknown bytes are errors.
    pub fn decode(bytes: &[u8]) -> Result<GrainHeader, GrainError> {
        decode_storage(bytes)
            .map_err(|e| GrainError::Binary {
                offset: e.offset,
                expected: e.expected.into_owned(),
            })
            .and_then(|mut h| {
                h.normalise()?;
                Ok(h)
            })
    }
}

/// The `gbhd` block inside a header's storage form ([`Grain::encode_header`]), as it was
/// written: what a GSF encoder writes for that grain, so that a store can send a grain
/// as GSF without decoding its header. `None` when the bytes are not a storage form of
/// this version.
pub(crate) fn stored_gbhd(storage: &[u8]) -> Option<&[u8]> {
    let [version, flags, _extensions, rest @ ..] = storage else {
        return None;
    };
    if *version != STORAGE_VERSION || flags & !HAS_CREATION != 0 {
        return None;
    }
    // A creation timestamp: sign, 48-bit seconds, 32-bit nanoseconds.
    let rest = if flags & HAS_CREATION != 0 {
        rest.get(11..)?
    } else {
        rest
    };
    if rest.get(..4)? != b"gbhd" {
        return None;
    }
    let size = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
    if size < GBHD_FIXED {
        return None;
    }
    rest.get(..size)
}

fn decode_storage(bytes: &[u8]) -> Result<GrainHeader, WireError> {
    let mut r = Reader::new(bytes, 0);
    let version = r.u8("storage header version")?;
    if version != STORAGE_VERSION {
        return Err(WireError {
            offset: 0,
            expected: format!("storage header version {STORAGE_VERSION}, found {version}").into(),
        });
    }
    let flags = r.u8("storage header flags")?;
    if flags & !HAS_CREATION != 0 {
        return Err(r.error("storage header flags of 0 or 1"));
    }
    let extensions = r.u8("storage header extension count")?;
    let creation = if flags & HAS_CREATION != 0 {
        Some(r.timestamp(9, "creation_timestamp")?)
    } else {
        None
    };
    let (tag, mut gbhd) = r
        .child("storage header")?
        .ok_or_else(|| r.error("a gbhd block"))?;
    if &tag != b"gbhd" {
        return Err(r.error("a gbhd block"));
    }
    let mut header = read_gbhd(&mut gbhd, 9)?;
    header.creation_timestamp = creation;
    for _ in 0..extensions {
        let Some((tag, mut ext)) = r.child("storage header")? else {
            return Err(r.error(format!("{extensions} extension blocks")));
        };
        match (&tag, &mut header.kind) {
            (b"xcvl", GrainKind::CodedVideo(c)) => c.length = ext.u64("cog_coded_frame.length")?,
            (b"xcsr", GrainKind::CodedVideo(c)) => {
                c.source_aspect_ratio = Some(ext.rational("cog_coded_frame.source_aspect_ratio")?)
            }
            (b"xcpr", GrainKind::CodedVideo(c)) => {
                c.pixel_aspect_ratio = Some(ext.rational("cog_coded_frame.pixel_aspect_ratio")?)
            }
            (b"xvof", GrainKind::Video(v)) => {
                let n = ext.u16("component offset count")?;
                if usize::from(n) != v.components.len() {
                    return Err(ext.error("one offset per video component"));
                }
                for c in &mut v.components {
                    c.offset = ext.u64("component offset")?;
                }
            }
            _ => return Err(ext.error("a known extension block for this grain type")),
        }
        if ext.remaining() != 0 {
            return Err(ext.error("the end of the extension block"));
        }
    }
    if r.remaining() != 0 {
        return Err(r.error("the end of the storage header"));
    }
    Ok(header)
}
