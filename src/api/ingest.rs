//! Decoding grain upload bodies as they stream in: GSF (`application/x-gsf`) or NDJSON
//! (`application/x-ndjson`, one JSON grain per line). Both yield each grain with the byte
//! offset where it started, and report faults with the offset where the body went wrong.

use bytes::{Buf, Bytes, BytesMut};

use super::ApiError;
use crate::grain::Grain;
use crate::gsf::{GsfDecoder, GsfError, GsfEvent};

/// The body formats grains can be uploaded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// A GSF stream.
    Gsf,
    /// One JSON grain per line.
    Ndjson,
}

/// Room for a grain's header blocks beside its payload.
const HEADER_ALLOWANCE: usize = 64 << 10;

/// An incremental decoder of an upload body.
pub struct BodyDecoder {
    format: FormatDecoder,
    /// The largest payload accepted. The format decoders' own limits leave room for the
    /// headers, so they stop a huge block before buffering it; this is the exact check.
    max_grain_bytes: usize,
}

enum FormatDecoder {
    Gsf(GsfDecoder),
    Ndjson(NdjsonDecoder),
}

/// A decoded grain and the offset of its first byte in the body.
pub struct Decoded {
    /// The grain.
    pub grain: Grain,
    /// Where it started in the body.
    pub offset: u64,
}

impl BodyDecoder {
    /// A decoder for `format` refusing payloads over `max_grain_bytes`.
    pub fn new(format: BodyFormat, max_grain_bytes: usize) -> BodyDecoder {
        let format = match format {
            BodyFormat::Gsf => FormatDecoder::Gsf(
                GsfDecoder::new().with_max_grain_size(max_grain_bytes + HEADER_ALLOWANCE),
            ),
            BodyFormat::Ndjson => FormatDecoder::Ndjson(NdjsonDecoder::new(
                // base64 grows the payload by 4/3; the metadata needs room too.
                max_grain_bytes / 3 * 4 + 4 + HEADER_ALLOWANCE,
            )),
        };
        BodyDecoder {
            format,
            max_grain_bytes,
        }
    }

    /// Feeds the next chunk of the body.
    pub fn push(&mut self, chunk: Bytes) {
        match &mut self.format {
            FormatDecoder::Gsf(d) => d.push(chunk),
            FormatDecoder::Ndjson(d) => d.push(chunk),
        }
    }

    /// The next complete grain, if its bytes are all in.
    pub fn next_grain(&mut self) -> Result<Option<Decoded>, ApiError> {
        let decoded = match &mut self.format {
            FormatDecoder::Gsf(d) => loop {
                let offset = d.offset();
                match d.next_event().map_err(gsf_problem)? {
                    Some(GsfEvent::Grain { grain, .. }) => break Some(Decoded { grain, offset }),
                    Some(GsfEvent::Head(_) | GsfEvent::End) => continue,
                    None => break None,
                }
            },
            FormatDecoder::Ndjson(d) => d.next_grain()?,
        };
        decoded.map(|d| self.within_limit(d)).transpose()
    }

    /// Checks that the body ended cleanly (on a grain boundary).
    pub fn finish(&mut self) -> Result<Option<Decoded>, ApiError> {
        let decoded = match &mut self.format {
            FormatDecoder::Gsf(d) => d.finish().map(|()| None).map_err(gsf_problem)?,
            FormatDecoder::Ndjson(d) => d.finish()?,
        };
        decoded.map(|d| self.within_limit(d)).transpose()
    }

    fn within_limit(&self, decoded: Decoded) -> Result<Decoded, ApiError> {
        let len = decoded.grain.payload().len();
        if len > self.max_grain_bytes {
            return Err(ApiError::too_large(
                "limits.max_grain_bytes",
                format!(
                    "the grain at {} has a payload of {len} bytes, over {} bytes",
                    decoded.grain.origin_timestamp(),
                    self.max_grain_bytes
                ),
            )
            .with_offset(decoded.offset));
        }
        Ok(decoded)
    }
}

fn gsf_problem(e: GsfError) -> ApiError {
    let offset = e.offset();
    let problem = match &e {
        GsfError::TooLarge { .. } => ApiError::too_large("limits.max_grain_bytes", e.to_string()),
        _ => ApiError::bad_body(e.to_string()),
    };
    match offset {
        Some(offset) => problem.with_offset(offset),
        None => problem,
    }
}

/// Splits NDJSON into lines as bytes arrive and parses each as a JSON grain.
pub struct NdjsonDecoder {
    buffer: BytesMut,
    /// Body offset of `buffer[0]`.
    offset: u64,
    /// How far `buffer` has been searched for a newline.
    scanned: usize,
    max_line: usize,
}

impl NdjsonDecoder {
    /// A decoder refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> NdjsonDecoder {
        NdjsonDecoder {
            buffer: BytesMut::new(),
            offset: 0,
            scanned: 0,
            max_line,
        }
    }

    /// Feeds the next chunk.
    pub fn push(&mut self, chunk: Bytes) {
        self.buffer.extend_from_slice(&chunk);
    }

    /// The next complete line's grain.
    pub fn next_grain(&mut self) -> Result<Option<Decoded>, ApiError> {
        loop {
            let Some(newline) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buffer.len();
                if self.buffer.len() > self.max_line {
                    return Err(ApiError::too_large(
                        "limits.max_grain_bytes",
                        format!("an NDJSON line is longer than {} bytes", self.max_line),
                    )
                    .with_offset(self.offset));
                }
                return Ok(None);
            };
            let end = self.scanned + newline;
            let line = self.buffer.split_to(end + 1).freeze();
            let offset = self.offset;
            self.offset += line.len() as u64;
            self.scanned = 0;
            if let Some(decoded) = parse_line(&line[..end], offset)? {
                return Ok(Some(decoded));
            }
        }
    }

    /// The last line, when the body does not end with a newline.
    pub fn finish(&mut self) -> Result<Option<Decoded>, ApiError> {
        let line = std::mem::take(&mut self.buffer);
        let offset = self.offset;
        self.offset += line.len() as u64;
        self.scanned = 0;
        parse_line(line.chunk(), offset)
    }
}

fn parse_line(line: &[u8], offset: u64) -> Result<Option<Decoded>, ApiError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    Grain::from_json(line)
        .map(|grain| Some(Decoded { grain, offset }))
        .map_err(|e| {
            ApiError::bad_body(format!("invalid JSON grain at byte {offset}: {e}"))
                .with_offset(offset)
        })
}
