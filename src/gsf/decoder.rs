//! [`GsfDecoder`]: an incremental GSF decoder fed with byte chunks as they arrive.
//!
//! The decoder keeps the chunks it was given until a whole block is in, then hands out
//! that block: a slice of the chunk when the block arrived in one chunk (no copy), one
//! copy into a buffer of the block's declared size otherwise. It never buffers more
//! than one block beyond what the caller pushed, and refuses declared sizes over its
//! limit before buffering anything for them.

use std::borrow::Cow;
use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use super::GsfError;
use super::head::GsfHead;
use crate::grain::Grain;
use crate::grain::wire::{Reader, WireError, read_gbhd};

/// Default limit on a grain's `grai` block (header and payload): 64 MiB of payload
/// plus room for any realistic header.
pub const DEFAULT_MAX_GRAIN_SIZE: usize = 64 * 1024 * 1024 + 64 * 1024;

/// Default limit on a `head` block.
pub const DEFAULT_MAX_HEAD_SIZE: usize = 16 * 1024 * 1024;

/// What the decoder found next.
// Grains are the common event and are returned by value; boxing them to shrink the
// enum would cost an allocation per grain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum GsfEvent {
    /// The head of a file (the first event of each file in concatenated input).
    Head(GsfHead),
    /// A grain of the segment with `local_id`.
    Grain {
        /// The segment the grain belongs to.
        local_id: u16,
        /// The grain; its `creation_timestamp` is `None` (GSF does not carry it).
        grain: Grain,
    },
    /// The terminator block (an empty `grai`) of the current file.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting `SSBBgrsg` and the version.
    FileHeader,
    /// Expecting the `head` block (other blocks before it are skipped).
    Head,
    /// Expecting a top-level block: a grain, the terminator, an unknown block or the
    /// start of a concatenated file.
    Blocks,
    /// After a terminator: the input may end or another file start.
    BetweenFiles,
    /// Discarding the rest of an unknown block; then back to `then`.
    Skip { remaining: u64, then: SkipThen },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SkipThen {
    Head,
    Blocks,
}

/// An incremental GSF decoder (versions 7, 8 and 9).
///
/// ```
/// # use grainstore::gsf::{GsfDecoder, GsfEvent};
/// # fn demo(chunks: Vec<bytes::Bytes>) -> Result<(), grainstore::gsf::GsfError> {
/// let mut decoder = GsfDecoder::new();
/// for chunk in chunks {
///     decoder.push(chunk);
///     while let Some(event) = decoder.next_event()? {
///         if let GsfEvent::Grain { grain, .. } = event { /* store it */ }
///     }
/// }
/// decoder.finish()?; // clean end, or an error saying where the input was cut
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GsfDecoder {
    /// Pushed input not yet decoded, oldest first.
    chunks: VecDeque<Bytes>,
    /// Total bytes in `chunks`.
    buffered: usize,
    /// Absolute offset of the first byte in `chunks`.
    offset: u64,
    state: State,
    /// Major version of the current file; it decides the `gbhd` layout.
    major: u16,
    /// Minor version of the current file, reported in its head.
    minor: u16,
    max_grain_size: usize,
    max_head_size: usize,
    /// Whether any file header has been read (an empty input is not a clean end).
    seen_file: bool,
    /// The first error: the decoder stays failed so that callers cannot skip past it.
    failed: Option<(u64, String)>,
}

impl Default for GsfDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl GsfDecoder {
    /// A decoder with the default limits.
    pub fn new() -> Self {
        GsfDecoder {
            chunks: VecDeque::new(),
            buffered: 0,
            offset: 0,
            state: State::FileHeader,
            major: 9,
            minor: 0,
            max_grain_size: DEFAULT_MAX_GRAIN_SIZE,
            max_head_size: DEFAULT_MAX_HEAD_SIZE,
            seen_file: false,
            failed: None,
        }
    }

    /// Sets the largest `grai` block (grain header and payload) accepted, in bytes.
    pub fn with_max_grain_size(mut self, bytes: usize) -> Self {
        self.max_grain_size = bytes;
        self
    }

    /// Sets the largest `head` block accepted, in bytes.
    pub fn with_max_head_size(mut self, bytes: usize) -> Self {
        self.max_head_size = bytes;
        self
    }

    /// Adds input. Empty chunks are ignored.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.buffered += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Absolute offset of the next byte to decode (bytes consumed so far).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes pushed but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The next event, `Ok(None)` when more input is needed.
    ///
    /// After an error every further call returns the same error.
    pub fn next_event(&mut self) -> Result<Option<GsfEvent>, GsfError> {
        if let Some((offset, expected)) = &self.failed {
            return Err(GsfError::Malformed {
                offset: *offset,
                expected: expected.clone(),
            });
        }
        let result = self.step();
        if let Err(e) = &result {
            self.failed = Some((e.offset().unwrap_or(self.offset), e.to_string()));
        }
        result
    }

    /// Declares the end of input: `Ok` when it ended cleanly (after a terminator, or on
    /// a grain boundary after a head), otherwise the error says where the input was cut
    /// and what was expected. Call it after `next_event` has returned `Ok(None)`.
    pub fn finish(&self) -> Result<(), GsfError> {
        if let Some((offset, expected)) = &self.failed {
            return Err(GsfError::Malformed {
                offset: *offset,
                expected: expected.clone(),
            });
        }
        let end = self.offset + self.buffered as u64;
        let truncated = |expected: Cow<'static, str>| {
            Err(GsfError::Truncated {
                offset: end,
                expected: expected.into_owned(),
            })
        };
        match self.state {
            State::Blocks | State::BetweenFiles if self.buffered == 0 => Ok(()),
            State::FileHeader if !self.seen_file => truncated("a GSF file header (\"SSBBgrsg\")".into()),
            State::FileHeader => truncated("the rest of a GSF file header".into()),
            State::Head => truncated("the head block".into()),
            State::Skip { remaining, .. } => {
                truncated(format!("{remaining} more bytes of an unknown block").into())
            }
            State::Blocks | State::BetweenFiles => match self.peek::<8>() {
                Some(h) => truncated(
                    format!(
                        "the rest of the '{}' block starting at byte {} ({} bytes declared, {} present)",
                        String::from_utf8_lossy(&h[..4]),
                        self.offset,
                        u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
                        self.buffered
                    )
                    .into(),
                ),
                None => truncated(format!("a block header (8 bytes, {} present)", self.buffered).into()),
            },
        }
    }

    /// Decodes a whole input at once (a convenience for tests and small bodies).
    pub fn decode_all(data: Bytes) -> Result<Vec<GsfEvent>, GsfError> {
        let mut decoder = GsfDecoder::new();
        decoder.push(data);
        let mut events = Vec::new();
        while let Some(event) = decoder.next_event()? {
            events.push(event);
        }
        decoder.finish()?;
        Ok(events)
    }

    fn step(&mut self) -> Result<Option<GsfEvent>, GsfError> {
        loop {
            match self.state {
                State::FileHeader => {
                    let Some(h) = self.peek::<12>() else {
                        return Ok(None);
                    };
                    if &h[..8] != b"SSBBgrsg" {
                        return Err(self.malformed(0, "a GSF file header (\"SSBBgrsg\")"));
                    }
                    let major = u16::from_le_bytes([h[8], h[9]]);
                    let minor = u16::from_le_bytes([h[10], h[11]]);
                    if !(7..=9).contains(&major) {
                        return Err(GsfError::UnsupportedVersion {
                            offset: self.offset + 8,
                            major,
                            minor,
                        });
                    }
                    self.consume(12);
                    self.major = major;
                    self.minor = minor;
                    self.seen_file = true;
                    self.state = State::Head;
                }
                State::Head => {
                    let Some((tag, size)) = self.block_header()? else {
                        return Ok(None);
                    };
                    if &tag != b"head" {
                        // mediagrains skips whatever precedes the head.
                        self.consume(8);
                        self.state = State::Skip {
                            remaining: size as u64 - 8,
                            then: SkipThen::Head,
                        };
                        continue;
                    }
                    if size > self.max_head_size {
                        return Err(GsfError::TooLarge {
                            offset: self.offset,
                            what: "head block",
                            declared: size as u64,
                            limit: self.max_head_size as u64,
                        });
                    }
                    if self.buffered < size {
                        return Ok(None);
                    }
                    let start = self.offset;
                    let block = self.take(size);
                    let mut r = Reader::new(&block[8..], start + 8);
                    let major = self.major;
                    let minor = self.minor;
                    let head = GsfHead::read(&mut r, major, minor).map_err(wire_error)?;
                    self.state = State::Blocks;
                    return Ok(Some(GsfEvent::Head(head)));
                }
                State::BetweenFiles | State::Blocks => {
                    let Some(h) = self.peek::<8>() else {
                        return Ok(None);
                    };
                    if &h == b"SSBBgrsg" {
                        // A concatenated file, with or without a terminator before it.
                        self.state = State::FileHeader;
                        continue;
                    }
                    if self.state == State::BetweenFiles {
                        return Err(self.malformed(
                            0,
                            "the end of input or another GSF file after the terminator",
                        ));
                    }
                    let tag = [h[0], h[1], h[2], h[3]];
                    let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
                    if &tag == b"grai" && size == 0 {
                        self.consume(8);
                        self.state = State::BetweenFiles;
                        return Ok(Some(GsfEvent::End));
                    }
                    if &tag != b"grai" {
                        let Some((_, size)) = self.block_header()? else {
                            return Ok(None);
                        };
                        self.consume(8);
                        self.state = State::Skip {
                            remaining: size as u64 - 8,
                            then: SkipThen::Blocks,
                        };
                        continue;
                    }
                    // The smallest grain: block header, local id and a gbhd block header.
                    if size < 18 {
                        return Err(self.malformed(
                            4,
                            format!("a grai block size of 0 or at least 18, found {size}"),
                        ));
                    }
                    if size > self.max_grain_size {
                        return Err(GsfError::TooLarge {
                            offset: self.offset,
                            what: "grain (grai block)",
                            declared: size as u64,
                            limit: self.max_grain_size as u64,
                        });
                    }
                    if self.buffered < size {
                        return Ok(None);
                    }
                    let start = self.offset;
                    let block = self.take(size);
                    let (local_id, grain) = decode_grai(block, start, self.major)?;
                    return Ok(Some(GsfEvent::Grain { local_id, grain }));
                }
                State::Skip { remaining, then } => {
                    if remaining == 0 {
                        self.state = match then {
                            SkipThen::Head => State::Head,
                            SkipThen::Blocks => State::Blocks,
                        };
                        continue;
                    }
                    if self.buffered == 0 {
                        return Ok(None);
                    }
                    let n = remaining.min(self.buffered as u64);
                    self.consume(n as usize);
                    self.state = State::Skip {
                        remaining: remaining - n,
                        then,
                    };
                }
            }
        }
    }

    /// Peeks a block header; a declared size under 8 is an error (skipping it could
    /// never advance).
    fn block_header(&self) -> Result<Option<([u8; 4], usize)>, GsfError> {
        let Some(h) = self.peek::<8>() else {
            return Ok(None);
        };
        let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        if size < 8 {
            return Err(self.malformed(
                4,
                format!(
                    "a block size of at least 8 for the '{}' block, found {size}",
                    String::from_utf8_lossy(&h[..4])
                ),
            ));
        }
        Ok(Some(([h[0], h[1], h[2], h[3]], size)))
    }

    fn malformed(&self, at: u64, expected: impl Into<String>) -> GsfError {
        GsfError::Malformed {
            offset: self.offset + at,
            expected: expected.into(),
        }
    }

    /// Copies the first `N` buffered bytes, if there are that many.
    fn peek<const N: usize>(&self) -> Option<[u8; N]> {
        if self.buffered < N {
            return None;
        }
        let mut out = [0u8; N];
        let front = self.chunks.front()?;
        if front.len() >= N {
            out.copy_from_slice(&front[..N]);
            return Some(out);
        }
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = (N - filled).min(chunk.len());
            out[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == N {
                break;
            }
        }
        Some(out)
    }

    /// Removes `n <= buffered` bytes.
    fn consume(&mut self, mut n: usize) {
        self.buffered -= n;
        self.offset += n as u64;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() > n {
                front.advance(n);
                break;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    /// Takes `n <= buffered` bytes as one `Bytes`: a slice of the front chunk when it
    /// holds them all, else one copy into a buffer of exactly `n` bytes.
    fn take(&mut self, n: usize) -> Bytes {
        self.buffered -= n;
        self.offset += n as u64;
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= n
        {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        // A reused buffer: see `crate::buffer` for why.
        let mut out = crate::buffer::POOL.take(n);
        while out.len() < n {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = (n - out.len()).min(front.len());
            out.extend_from_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        crate::buffer::POOL.freeze(out)
    }
}

fn wire_error(e: WireError) -> GsfError {
    GsfError::Malformed {
        offset: e.offset,
        expected: e.expected.into_owned(),
    }
}

/// Decodes one whole `grai` block that starts at absolute offset `start`.
fn decode_grai(block: Bytes, start: u64, major: u16) -> Result<(u16, Grain), GsfError> {
    let mut r = Reader::new(&block[8..], start + 8);
    let local_id = r.u16("segment local_id").map_err(wire_error)?;
    let gbhd_at = r.offset();
    let (tag, mut gbhd) =
        r.child("grai")
            .map_err(wire_error)?
            .ok_or_else(|| GsfError::Malformed {
                offset: gbhd_at,
                expected: "a gbhd block".into(),
            })?;
    if &tag != b"gbhd" {
        return Err(GsfError::Malformed {
            offset: gbhd_at,
            expected: format!(
                "a gbhd block first in the grain, found '{}'",
                String::from_utf8_lossy(&tag)
            ),
        });
    }
    let header = read_gbhd(&mut gbhd, major).map_err(wire_error)?;
    let mut payload = Bytes::new();
    while let Some((tag, data)) = r.child("grai").map_err(wire_error)? {
        if &tag == b"grdt" {
            // Slice the block rather than copy: `data` borrows `block`.
            let from = (data.offset() - start) as usize;
            payload = block.slice(from..from + data.remaining());
            break;
        }
    }
    let grain = Grain::new(header, payload).map_err(|source| GsfError::InvalidGrain {
        offset: start,
        source,
    })?;
    Ok((local_id, grain))
}
