//! The value stored in the grain index for each grain: where its payload is, its
//! checksum, the end of its duration (for the flow's timerange), and its header.
//!
//! Layout (little-endian):
//!
//! ```text
//! u8   version (1)
//! u8   flags: bit 0 payload inline, bit 1 has a duration
//! u32  crc32c of the payload
//! u64  payload length
//! i128 end of the grain (origin + duration) in nanoseconds, when bit 1 is set
//! u64  segment id, u64 offset    when the payload is in a segment file
//! u32  header length, header     (the grain header's binary form, creation time included)
//! ...  payload                   when inline
//! ```

use bytes::Bytes;

use crate::grain::{Grain, GrainHeader};
use crate::store::StoreError;
use crate::time::Timestamp;

const VERSION: u8 = 1;
const FLAG_INLINE: u8 = 1;
const FLAG_DURATION: u8 = 2;

/// Where a payload lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// In the record itself, after the header.
    Inline,
    /// In a segment file.
    Segment {
        /// The segment's id (its file name).
        id: u64,
        /// Byte offset in the segment.
        offset: u64,
    },
}

/// A decoded index record.
#[derive(Debug)]
pub struct Record<'a> {
    /// The payload's checksum.
    pub crc: u32,
    /// The payload's length.
    pub len: u64,
    /// Where the grain's duration ends, in nanoseconds, when it has one.
    pub end: Option<i128>,
    /// Where the payload is.
    pub location: Location,
    /// The header's binary form.
    pub header: &'a [u8],
    /// The payload when inline.
    pub inline: &'a [u8],
}

/// The end of a grain's duration, rounded to the nearest nanosecond; `None` when the grain
/// has no (positive) duration.
pub fn grain_end(grain: &Grain) -> Option<i128> {
    let duration = grain.duration();
    if duration.numerator <= 0 || duration.denominator <= 0 {
        return None;
    }
    let num = duration.numerator as i128 * 1_000_000_000;
    let den = duration.denominator as i128;
    let nanos = (2 * num + den) / (2 * den);
    Some(grain.origin_timestamp().to_nanos() + nanos)
}

/// Appends the record of `grain` to `out`, with `created` as its creation timestamp.
pub fn encode(grain: &Grain, created: Option<Timestamp>, location: Location, out: &mut Vec<u8>) {
    let payload = grain.payload();
    let end = grain_end(grain);
    let mut flags = 0;
    if location == Location::Inline {
        flags |= FLAG_INLINE;
    }
    if end.is_some() {
        flags |= FLAG_DURATION;
    }
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    if let Some(end) = end {
        out.extend_from_slice(&end.to_le_bytes());
    }
    if let Location::Segment { id, offset } = location {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    grain.encode_header_created(created, out);
    let header_len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&header_len.to_le_bytes());
    if location == Location::Inline {
        out.extend_from_slice(payload);
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("grain index record: {what}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

/// Decodes a record.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, StoreError> {
    let mut r = Reader { bytes };
    let [version, flags] = r.array::<2>()?;
    if version != VERSION {
        return Err(corrupt(&format!("unknown version {version}")));
    }
    let crc = u32::from_le_bytes(r.array()?);
    let len = u64::from_le_bytes(r.array()?);
    let end = if flags & FLAG_DURATION != 0 {
        Some(i128::from_le_bytes(r.array()?))
    } else {
        None
    };
    let location = if flags & FLAG_INLINE != 0 {
        Location::Inline
    } else {
        Location::Segment {
            id: u64::from_le_bytes(r.array()?),
            offset: u64::from_le_bytes(r.array()?),
        }
    };
    let header_len = u32::from_le_bytes(r.array()?) as usize;
    let header = r.take(header_len)?;
    let inline = if location == Location::Inline {
        r.take(usize::try_from(len).map_err(|_| corrupt("length"))?)?
    } else {
        &[]
    };
    Ok(Record {
        crc,
        len,
        end,
        location,
        header,
        inline,
    })
}

impl Record<'_> {
    /// Rebuilds the grain from its header and `payload` (already checked).
    pub fn grain(&self, payload: Bytes) -> Result<Grain, StoreError> {
        let header =
            GrainHeader::decode(self.header).map_err(|e| corrupt(&format!("grain header: {e}")))?;
        // The header decoded strictly and was valid when stored; the payload passed
        // its checksum (or was not asked for).
        Ok(Grain::from_stored(header, payload))
    }

    /// Checks `payload` against the stored checksum.
    pub fn verify(&self, payload: &[u8], timestamp: Timestamp) -> Result<(), StoreError> {
        if payload.len() as u64 != self.len || crc32c::crc32c(payload) != self.crc {
            return Err(StoreError::Corrupt(format!(
                "payload of the grain at {timestamp} fails its checksum"
            )));
        }
        Ok(())
    }
}
