//! The value stored in the grain index for each grain: where its payload is, its
//! checksum, the end of its duration (for the flow's timerange), and its header.
//!
//! Layout (little-endian), version 2:
//!
//! ```text
//! u8   version (2)
//! u8   flags: bit 0 payload inline, bit 1 has a duration
//! u32  crc32c of the payload
//! u64  payload length
//! i128 end of the grain (origin + duration) in nanoseconds, when bit 1 is set
//! u64  segment id, u64 offset    when the payload is in a segment file
//! u32  header length, header     (the grain header's binary form, creation time included)
//! u32  crc32c of every byte above
//! ...  payload                   when inline
//! ```
//!
//! # Why the record has a checksum of its own
//!
//! The payload's checksum covers the payload only. redb checks its page checksums when it
//! repairs a file after a crash, and the store checks every page when it opens after a
//! clean stop (see `open_index`), but a page read while the store runs is trusted: a
//! record damaged on disk since the last start, or by anything that bypasses the page
//! checksums, would give a wrong header (another timestamp, rate or flow) or point at
//! the wrong bytes of a segment. With its own checksum the grain fails with
//! [`StoreError::Corrupt`] instead, as a damaged payload does.
//!
//! Version 1 records (the same without the record checksum) are still read, unchecked,
//! so that a store written before version 2 opens as it was; every record written now
//! is version 2.

use bytes::Bytes;

use crate::grain::{Grain, GrainHeader};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The version every record is written in.
const VERSION: u8 = 2;
/// Records without the record checksum, still read.
const VERSION_UNCHECKED: u8 = 1;
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
    let start = out.len();
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
    let record_crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&record_crc.to_le_bytes());
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
    if version != VERSION && version != VERSION_UNCHECKED {
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
    if version == VERSION {
        let covered = bytes.len() - r.bytes.len();
        let stored = u32::from_le_bytes(r.array()?);
        if crc32c::crc32c(&bytes[..covered]) != stored {
            return Err(corrupt("fails its checksum"));
        }
    }
    let inline = if location == Location::Inline {
        r.take(usize::try_from(len).map_err(|_| corrupt("length"))?)?
    } else {
        &[]
    };
    if !r.bytes.is_empty() {
        return Err(corrupt("bytes past its end"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grain::{GrainHeader, GrainKind};
    use crate::time::Rational;
    use uuid::Uuid;

    fn grain(payload: &[u8]) -> Grain {
        let at = Timestamp::from_nanos(1_420_102_800_040_000_000).unwrap();
        let mut header =
            GrainHeader::new(Uuid::from_u128(1), Uuid::from_u128(2), at, GrainKind::Empty);
        header.duration = Rational::new(1, 25);
        Grain::new(header, Bytes::copy_from_slice(payload)).unwrap()
    }

    fn encoded(grain: &Grain, location: Location) -> Vec<u8> {
        let mut out = vec![0xee; 3];
        encode(grain, Some(grain.origin_timestamp()), location, &mut out);
        out.split_off(3)
    }

    /// A payload in the record and one in a segment.
    const LOCATIONS: [Location; 2] = [
        Location::Inline,
        Location::Segment {
            id: 3,
            offset: 4096,
        },
    ];

    /// The same record as version 1 wrote it: no record checksum.
    fn as_version_1(record: &[u8], payload_len: usize) -> Vec<u8> {
        let checksum_at = record.len() - payload_len - 4;
        let mut old = record[..checksum_at].to_vec();
        old.extend_from_slice(&record[checksum_at + 4..]);
        old[0] = VERSION_UNCHECKED;
        old
    }

    #[test]
    fn records_decode_to_what_was_encoded() {
        let g = grain(b"payload");
        for location in LOCATIONS {
            let bytes = encoded(&g, location);
            let record = decode(&bytes).unwrap();
            assert_eq!(record.location, location);
            assert_eq!(record.len, 7);
            assert_eq!(record.end, grain_end(&g));
            let inline = if location == Location::Inline {
                &b"payload"[..]
            } else {
                &[]
            };
            assert_eq!(record.inline, inline);
            record.verify(b"payload", g.origin_timestamp()).unwrap();
            let back = record.grain(Bytes::from_static(b"payload")).unwrap();
            assert_eq!(back.header().duration, g.header().duration);
            assert_eq!(back.origin_timestamp(), g.origin_timestamp());
        }
    }

    #[test]
    fn any_damaged_byte_outside_the_payload_fails_the_record() {
        let g = grain(b"payload");
        for location in LOCATIONS {
            let bytes = encoded(&g, location);
            let payload_len = if location == Location::Inline { 7 } else { 0 };
            // The payload has a checksum of its own, checked by `verify`.
            for at in 0..bytes.len() - payload_len {
                for flip in [0x01u8, 0x80] {
                    let mut damaged = bytes.clone();
                    damaged[at] ^= flip;
                    assert!(
                        matches!(decode(&damaged), Err(StoreError::Corrupt(_))),
                        "byte {at} ^ {flip:#x} of a {location:?} record went unnoticed"
                    );
                }
            }
        }
    }

    #[test]
    fn a_record_turned_into_version_1_is_refused() {
        let g = grain(b"payload");
        for location in LOCATIONS {
            let mut bytes = encoded(&g, location);
            bytes[0] = VERSION_UNCHECKED;
            assert!(matches!(decode(&bytes), Err(StoreError::Corrupt(_))));
        }
    }

    #[test]
    fn version_1_records_are_still_read() {
        let g = grain(b"payload");
        let old = as_version_1(&encoded(&g, Location::Inline), 7);
        let record = decode(&old).unwrap();
        assert_eq!(record.inline, b"payload");
        record.verify(b"payload", g.origin_timestamp()).unwrap();
        assert_eq!(
            record
                .grain(Bytes::from_static(b"payload"))
                .unwrap()
                .origin_timestamp(),
            g.origin_timestamp()
        );
    }
}
