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
//!
//! # Runs: several grains in one index value
//!
//! A batch of small grains with increasing timestamps is stored as runs of up to
//! [`RUN_GRAINS`] grains ([`RUN_PAYLOAD_BYTES`] of payload), each one index value keyed
//! by its first grain's timestamp:
//!
//! ```text
//! u8   version (3)
//! u8   flags (0)
//! u16  count n, at least 2
//! n x  (i128 origin timestamp in ns, u32 end of the grain's record in the records)
//! u32  crc32c of every byte above
//! ...  the n grains' version 2 records, one after another
//! ```
//!
//! Timestamps are strictly increasing, and no other key of the flow lies between a
//! run's first and last timestamp: the index value holding a grain is always the last
//! one keyed at or before its timestamp. Each record keeps its own checksum, so damage
//! to one fails that grain. Damage to the directory (or the version byte) fails the
//! run's grains, and the writes that may land in its span, which is then unknown, until
//! a delete takes the run's first grain and with it the run.
//!
//! Why: redb's cost is per B-tree insert (a descent, a leaf rewritten, pages tracked),
//! so a thousand 200-byte grains cost a thousand inserts. Measured with redb 2.6.4 on
//! this store's kind of machine, a million 420-byte values committed 1,000 per
//! transaction went in at 231k values/s, the same bytes as values of 8 at 491k
//! grains/s, of 32 at 732k and of 100 at 916k.

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

/// The version of a run.
const VERSION_RUN: u8 = 3;
/// The most grains one run holds.
pub const RUN_GRAINS: usize = 64;
/// The most payload bytes one run holds (a grain with more is stored alone).
pub const RUN_PAYLOAD_BYTES: usize = 12 << 10;
/// One member's entry in a run's directory: timestamp and record end.
const RUN_MEMBER: usize = 20;
/// Version, flags and count.
const RUN_HEAD: usize = 4;

/// Appends an index value holding `members` (timestamp, record), in increasing
/// timestamp order: the record itself for one member, a run for more.
pub fn encode_entry(members: &[(i128, &[u8])], out: &mut Vec<u8>) {
    if let [(_, record)] = members {
        out.extend_from_slice(record);
        return;
    }
    debug_assert!(members.len() <= u16::MAX as usize);
    debug_assert!(members.windows(2).all(|w| w[0].0 < w[1].0));
    let start = out.len();
    out.push(VERSION_RUN);
    out.push(0);
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    let mut end = 0u32;
    for (timestamp, record) in members {
        end += record.len() as u32;
        out.extend_from_slice(&timestamp.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    for (_, record) in members {
        out.extend_from_slice(record);
    }
}

/// Whether an index value is a run (without checking it).
pub fn is_run(value: &[u8]) -> bool {
    value.first() == Some(&VERSION_RUN)
}

/// Whether a value that does not read as a run was one whose version byte is damaged:
/// its directory passes its checksum once the version is put back.
pub fn was_run(value: &[u8]) -> bool {
    if value.len() < RUN_HEAD || is_run(value) {
        return false;
    }
    let count = u16::from_le_bytes([value[2], value[3]]) as usize;
    let checked = RUN_HEAD + count * RUN_MEMBER;
    if count < 2 || value.len() < checked + 4 {
        return false;
    }
    let stored = u32::from_le_bytes(value[checked..checked + 4].try_into().unwrap());
    crc32c::crc32c_append(crc32c::crc32c(&[VERSION_RUN]), &value[1..checked]) == stored
}

/// An index value read as the grains it holds: one record, or a run's.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    key: i128,
    /// The run's directory (empty for a single record).
    directory: &'a [u8],
    /// The records (the whole value for a single record).
    records: &'a [u8],
}

impl<'a> Entry<'a> {
    /// Reads the value stored under timestamp `key`. A run's directory is checked (and
    /// a run whose version byte is damaged is not taken for one grain); the records are
    /// not (each is checked when decoded).
    pub fn read(key: i128, value: &'a [u8]) -> Result<Entry<'a>, StoreError> {
        if !is_run(value) {
            if was_run(value) {
                return Err(corrupt("run of grains: a damaged version"));
            }
            return Ok(Entry {
                key,
                directory: &[],
                records: value,
            });
        }
        let run = |what: &str| corrupt(&format!("run of grains: {what}"));
        if value.len() < RUN_HEAD {
            return Err(run("truncated"));
        }
        let count = u16::from_le_bytes([value[2], value[3]]) as usize;
        let checked = RUN_HEAD + count * RUN_MEMBER;
        if value.len() < checked + 4 {
            return Err(run("truncated"));
        }
        let stored = u32::from_le_bytes(value[checked..checked + 4].try_into().unwrap());
        if crc32c::crc32c(&value[..checked]) != stored {
            return Err(run("fails its checksum"));
        }
        if value[1] != 0 || count < 2 {
            return Err(run("malformed"));
        }
        let entry = Entry {
            key,
            directory: &value[RUN_HEAD..checked],
            records: &value[checked + 4..],
        };
        let mut previous: Option<(i128, usize)> = None;
        for i in 0..count {
            let (timestamp, end) = entry.member(i);
            let ordered = match previous {
                None => timestamp == key,
                Some((t, e)) => t < timestamp && e < end,
            };
            if !ordered {
                return Err(run("members out of order"));
            }
            previous = Some((timestamp, end));
        }
        if previous.map(|(_, end)| end) != Some(entry.records.len()) {
            return Err(run("records do not fill it"));
        }
        Ok(entry)
    }

    fn member(&self, i: usize) -> (i128, usize) {
        let at = i * RUN_MEMBER;
        let timestamp = i128::from_le_bytes(self.directory[at..at + 16].try_into().unwrap());
        let end = u32::from_le_bytes(self.directory[at + 16..at + 20].try_into().unwrap());
        (timestamp, end as usize)
    }

    /// How many grains it holds.
    pub fn len(&self) -> usize {
        if self.directory.is_empty() {
            1
        } else {
            self.directory.len() / RUN_MEMBER
        }
    }

    /// The timestamp of grain `i`, in ns.
    pub fn timestamp(&self, i: usize) -> i128 {
        if self.directory.is_empty() {
            self.key
        } else {
            self.member(i).0
        }
    }

    /// The timestamp of its last grain.
    pub fn last(&self) -> i128 {
        self.timestamp(self.len() - 1)
    }

    /// The record of grain `i` (decode it with [`decode`]).
    pub fn record(&self, i: usize) -> &'a [u8] {
        if self.directory.is_empty() {
            return self.records;
        }
        let start = if i == 0 { 0 } else { self.member(i - 1).1 };
        &self.records[start..self.member(i).1]
    }

    /// Which grain has timestamp `timestamp`, if any.
    pub fn find(&self, timestamp: i128) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.timestamp(mid).cmp(&timestamp) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// Its grains' timestamps and records.
    pub fn members(self) -> impl DoubleEndedIterator<Item = (i128, &'a [u8])> + 'a {
        (0..self.len()).map(move |i| (self.timestamp(i), self.record(i)))
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

    /// A run of three grains 40 ms apart, and the records it holds.
    fn run() -> (Vec<u8>, Vec<(i128, Vec<u8>)>) {
        let first = grain(b"x").origin_timestamp().to_nanos();
        let members: Vec<(i128, Vec<u8>)> = (0..3)
            .map(|i| {
                let mut g = grain(&vec![i as u8; 5 + i]);
                let (mut header, payload) = g.clone().into_parts();
                header.origin_timestamp =
                    Timestamp::from_nanos(first + i as i128 * 40_000_000).unwrap();
                g = Grain::new(header, payload).unwrap();
                (
                    first + i as i128 * 40_000_000,
                    encoded(&g, Location::Inline),
                )
            })
            .collect();
        let borrowed: Vec<(i128, &[u8])> =
            members.iter().map(|(t, r)| (*t, r.as_slice())).collect();
        let mut value = Vec::new();
        encode_entry(&borrowed, &mut value);
        (value, members)
    }

    #[test]
    fn runs_hold_their_records_in_order() {
        let (value, members) = run();
        assert!(is_run(&value));
        let first = members[0].0;
        let entry = Entry::read(first, &value).unwrap();
        assert_eq!(entry.len(), 3);
        assert_eq!(entry.last(), members[2].0);
        for (i, (t, record)) in members.iter().enumerate() {
            assert_eq!(entry.timestamp(i), *t);
            assert_eq!(entry.record(i), record.as_slice());
            assert_eq!(entry.find(*t), Some(i));
            assert_eq!(entry.find(*t + 1), None);
            decode(entry.record(i)).unwrap();
        }
        assert_eq!(entry.find(first - 1), None);
        let listed: Vec<(i128, &[u8])> = entry.members().collect();
        assert_eq!(listed.len(), 3);
        // One member is stored as its record alone.
        let mut single = Vec::new();
        encode_entry(&[(first, &members[0].1)], &mut single);
        assert_eq!(single, members[0].1);
        assert!(!is_run(&single));
        let entry = Entry::read(first, &single).unwrap();
        assert_eq!((entry.len(), entry.record(0)), (1, single.as_slice()));
    }

    #[test]
    fn any_damaged_byte_of_a_run_directory_fails_the_run() {
        let (value, members) = run();
        let directory_end = RUN_HEAD + 3 * RUN_MEMBER + 4;
        for at in 0..directory_end {
            for flip in [0x01u8, 0x80] {
                let mut damaged = value.clone();
                damaged[at] ^= flip;
                // A damaged version byte makes it read as one grain, whose record fails,
                // and which is told apart from a damaged single record.
                let read = Entry::read(members[0].0, &damaged).and_then(|e| decode(e.record(0)));
                assert!(
                    read.is_err(),
                    "byte {at} ^ {flip:#x} of the directory went unnoticed"
                );
                assert_eq!(was_run(&damaged), at == 0, "byte {at} ^ {flip:#x}");
            }
        }
        // A damaged single record is not taken for a run.
        for at in 0..members[0].1.len() {
            let mut damaged = members[0].1.clone();
            damaged[at] ^= 0x01;
            assert!(!was_run(&damaged), "byte {at} of a record");
        }
        // Stored under another key, or cut short.
        assert!(Entry::read(members[0].0 + 1, &value).is_err());
        assert!(Entry::read(members[0].0, &value[..value.len() - 1]).is_err());
        assert!(Entry::read(members[0].0, &value[..directory_end - 1]).is_err());
    }
}
