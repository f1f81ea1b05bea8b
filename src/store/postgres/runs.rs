//! Runs: a batch's small grains, in time order, kept as one row.
//!
//! PostgreSQL's cost for small grains is per row (the heap tuple, its B-tree entry, its
//! WAL record, the executor's work on each element of the insert's arrays), not per
//! byte: a row per 200-byte grain made PostgreSQL spend three times what the whole
//! embedded store spends per grain. A writer appending small grains therefore stores
//! them as runs of up to [`MAX_GRAINS`], one row each, keyed by the first grain's
//! timestamp, with the last grain's timestamp beside it.
//!
//! # Invariant
//!
//! Every grain of a flow is in exactly one row, and the span of a row (from its key to
//! its last grain; a single grain's span is its own timestamp) holds no grain of any
//! other row. So the grains within a time range are the members of the rows keyed in
//! it and of the one row keyed just before it, and the row holding a timestamp is the
//! row with the greatest key at or before it. Writers keep the invariant under a
//! per-flow advisory lock: a batch becomes runs only where its span meets no stored
//! row, a grain written inside a run's span splits the run into single rows first, and
//! so does a delete whose range cuts through a run.
//!
//! Only a batch tried without its plan (all its payloads inline, see `writer`) becomes
//! runs: a batch that repeats a stored timestamp, or interleaves with stored grains, is
//! stored as single rows.
//!
//! # Encoding
//!
//! Little-endian: a version byte, the member count (`u16`), then for each member its
//! origin timestamp (`i64` seconds, `i32` nanoseconds, as the key columns), its end
//! (a flag byte, then seconds and nanoseconds, zeros when it has none), the header's
//! length (`u32`) and
//! binary form, the payload's crc32c (`u32`), its length (`u32`) and bytes. Each
//! payload keeps its own checksum, checked on read like a single row's.

use bytes::{Buf, Bytes};

use super::{join, split};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The encoding's version byte.
const VERSION: u8 = 1;

/// At most this many grains in a run.
pub const MAX_GRAINS: usize = 64;

/// At most this many bytes in a run, so that its row stays in one 8 KiB page,
/// uncompressed and not moved to TOAST (the table's `toast_tuple_target` is 8160).
pub const MAX_BYTES: usize = 7_800;

/// Only grains whose payload is at most this long join runs.
pub const MAX_PAYLOAD: usize = 2_048;

/// The bytes of a run before its members.
pub const EMPTY_LEN: usize = 3;

/// The bytes a member takes in a run.
pub fn member_len(header: usize, payload: usize) -> usize {
    8 + 4 + 1 + 12 + 4 + header + 4 + 4 + payload
}

/// Whether a member of these sizes fits in a run of `members` members taking `bytes`
/// bytes (with [`EMPTY_LEN`]), within [`MAX_GRAINS`] and [`MAX_BYTES`].
pub fn fits(members: usize, bytes: usize, header: usize, payload: usize) -> bool {
    members < MAX_GRAINS
        && payload <= MAX_PAYLOAD
        && bytes + member_len(header, payload) <= MAX_BYTES
}

/// One grain of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The origin timestamp.
    pub timestamp: Timestamp,
    /// The end of the grain's duration, if it has one.
    pub end: Option<Timestamp>,
    /// The header's binary form.
    pub header: Bytes,
    /// The payload's crc32c, as written.
    pub crc: u32,
    /// The payload.
    pub payload: Bytes,
}

/// Builds a run, member by member, in time order.
#[derive(Debug, Default)]
pub struct RunBuilder {
    buf: Vec<u8>,
    count: u16,
}

impl RunBuilder {
    /// An empty run.
    pub fn new() -> RunBuilder {
        let mut buf = Vec::with_capacity(MAX_BYTES);
        buf.push(VERSION);
        buf.extend_from_slice(&0u16.to_le_bytes());
        RunBuilder { buf, count: 0 }
    }

    /// Appends a member (later than the previous one: the caller's part).
    pub fn push(
        &mut self,
        timestamp: Timestamp,
        end: Option<Timestamp>,
        header: &[u8],
        crc: u32,
        payload: &[u8],
    ) {
        let (sec, nsec) = split(timestamp);
        self.buf.extend_from_slice(&sec.to_le_bytes());
        self.buf.extend_from_slice(&nsec.to_le_bytes());
        match end.map(split) {
            Some((sec, nsec)) => {
                self.buf.push(1);
                self.buf.extend_from_slice(&sec.to_le_bytes());
                self.buf.extend_from_slice(&nsec.to_le_bytes());
            }
            None => self.buf.extend_from_slice(&[0; 13]),
        }
        self.buf
            .extend_from_slice(&(header.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(header);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    /// The encoded run.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[1..3].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Decodes a run; its members share `run`'s memory. Fails with [`StoreError::Corrupt`]
/// on anything but a well-formed run of members in strictly increasing time order.
pub fn decode(run: &Bytes) -> Result<Vec<Member>, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("a stored run of grains {what}"));
    let mut rest = run.clone();
    if rest.remaining() < 3 {
        return Err(bad("is cut short"));
    }
    let version = rest.get_u8();
    if version != VERSION {
        return Err(bad(&format!("has the unknown version {version}")));
    }
    let count = usize::from(rest.get_u16_le());
    if count == 0 {
        return Err(bad("is empty"));
    }
    let mut members: Vec<Member> = Vec::with_capacity(count);
    let short = || bad("is cut short");
    for _ in 0..count {
        if rest.remaining() < 8 + 4 + 13 + 4 {
            return Err(short());
        }
        let timestamp = join(rest.get_i64_le(), rest.get_i32_le())?;
        let has_end = rest.get_u8();
        let (end_sec, end_nsec) = (rest.get_i64_le(), rest.get_i32_le());
        let end = match has_end {
            0 => None,
            1 => Some(join(end_sec, end_nsec)?),
            _ => return Err(bad("has a damaged member")),
        };
        let header_len = rest.get_u32_le() as usize;
        if rest.remaining() < header_len.saturating_add(8) {
            return Err(short());
        }
        let header = rest.split_to(header_len);
        let crc = rest.get_u32_le();
        let payload_len = rest.get_u32_le() as usize;
        if rest.remaining() < payload_len {
            return Err(short());
        }
        let payload = rest.split_to(payload_len);
        if members.last().is_some_and(|m| m.timestamp >= timestamp) {
            return Err(bad("is out of time order"));
        }
        members.push(Member {
            timestamp,
            end,
            header,
            crc,
            payload,
        });
    }
    if rest.has_remaining() {
        return Err(bad("has bytes after its last member"));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(nanos: i128, end: Option<i128>, header: Vec<u8>, payload: Vec<u8>) -> Member {
        let payload = Bytes::from(payload);
        Member {
            timestamp: Timestamp::from_nanos(nanos).unwrap(),
            end: end.map(|e| Timestamp::from_nanos(e).unwrap()),
            header: Bytes::from(header),
            crc: crc32c::crc32c(&payload),
            payload,
        }
    }

    fn encode(members: &[Member]) -> Vec<u8> {
        let mut run = RunBuilder::new();
        for m in members {
            run.push(m.timestamp, m.end, &m.header, m.crc, &m.payload);
        }
        run.finish()
    }

    fn members() -> impl Strategy<Value = Vec<Member>> {
        prop::collection::vec(
            (
                1u64..1_000_000_000_000,
                prop::option::of(0u64..1_000_000_000),
                prop::collection::vec(any::<u8>(), 0..80),
                prop::collection::vec(any::<u8>(), 0..300),
            ),
            1..40,
        )
        .prop_map(|parts| {
            let mut at = 1_700_000_000_000_000_000i128;
            parts
                .into_iter()
                .map(|(step, length, header, payload)| {
                    at += i128::from(step);
                    member(at, length.map(|l| at + i128::from(l)), header, payload)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn runs_decode_to_their_members(members in members()) {
            let run = Bytes::from(encode(&members));
            prop_assert_eq!(decode(&run).unwrap(), members);
        }

        #[test]
        fn a_damaged_run_fails_or_decodes_without_panicking(
            members in members(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let run = encode(&members);
            // Cut short anywhere: always an error.
            let short = Bytes::copy_from_slice(&run[..cut.index(run.len())]);
            prop_assert!(matches!(decode(&short), Err(StoreError::Corrupt(_))));
            // A flipped byte: an error or members, never a panic.
            let mut flipped = run.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 0x5a;
            let _ = decode(&Bytes::from(flipped));
        }
    }

    #[test]
    fn members_out_of_order_are_refused() {
        let a = member(2_000, None, vec![1], vec![2]);
        let b = member(1_000, None, vec![1], vec![2]);
        let run = Bytes::from(encode(&[a.clone(), b]));
        assert!(matches!(decode(&run), Err(StoreError::Corrupt(_))));
        let run = Bytes::from(encode(&[a.clone(), a]));
        assert!(matches!(decode(&run), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn runs_stop_at_their_limits() {
        let (header, payload) = ([0u8; 100], [0u8; 200]);
        let mut run = RunBuilder::new();
        let (mut members, mut bytes) = (0, EMPTY_LEN);
        while fits(members, bytes, header.len(), payload.len()) {
            members += 1;
            bytes += member_len(header.len(), payload.len());
            run.push(
                Timestamp::from_nanos(members as i128).unwrap(),
                None,
                &header,
                0,
                &payload,
            );
        }
        let encoded = run.finish();
        assert_eq!(encoded.len(), bytes);
        assert!(bytes <= MAX_BYTES && bytes + member_len(100, 200) > MAX_BYTES);
        assert_eq!(decode(&Bytes::from(encoded)).unwrap().len(), members);
        assert!(fits(MAX_GRAINS - 1, EMPTY_LEN, 0, 0));
        assert!(!fits(MAX_GRAINS, EMPTY_LEN, 0, 0));
        assert!(!fits(0, EMPTY_LEN, 0, MAX_PAYLOAD + 1));
    }
}
