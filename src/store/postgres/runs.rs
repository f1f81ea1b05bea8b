//! Runs: a batch's small grains, in time order, kept as one row.
//!
//! PostgreSQL's cost for small grains is per row (the heap tuple, its B-tree entry, its
//! WAL record, the executor's work on each element of the insert's arrays) and per
//! byte (the WAL, a new 8 KiB page for each row of about a page, the bytes received): a
//! row per 200-byte grain made PostgreSQL spend three times what the whole embedded
//! store spends per grain. A writer appending small grains therefore stores them as
//! runs of up to [`MAX_GRAINS`], one row each, keyed by the first grain's timestamp,
//! with the last grain's timestamp beside it, in as few bytes as the encoding below
//! allows.
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
//! Only a batch tried without its plan (all its payloads small, see `writer`) becomes
//! runs: a batch that repeats a stored timestamp, or interleaves with stored grains, is
//! stored as single rows.
//!
//! # Where the payloads are
//!
//! A run holds its members' payloads, or (for a batch whose payloads add up to more than
//! the store's `inline_batch_max`, 64 KiB unless configured) leaves them in the batch's
//! object: the row's `object_id` is that
//! object and its `object_offset` where the first member's payload starts, the others'
//! following it in member order. PostgreSQL's cost per small grain follows the bytes it
//! stores (WAL, a new page per row, the bytes received), so such a row holds only the
//! members' keys and headers (about 52 bytes for a 200-byte grain that takes about 250
//! with its payload), and the object store takes the payloads in one object per batch,
//! as it takes large payloads.
//!
//! # Encoding
//!
//! Little-endian. Version 2: a version byte, a flags byte (1: the payloads are in the
//! row's object), the member count (`u16`), then for each member
//! - its origin timestamp (`i64` seconds, `i32` nanoseconds, as the key columns);
//! - its end: a flag byte, then, when it has one, its seconds and nanoseconds;
//! - its header's binary form as a change of the previous member's (the first member's
//!   against an empty one): the lengths (LEB128) of the previous header's prefix and
//!   suffix it keeps and of the bytes between them, then those bytes. A batch's headers
//!   differ in their timestamps only, so a member's header takes a few bytes;
//! - its payload's crc32c (`u32`) and length (LEB128), then the payload's bytes unless
//!   they are in the object.
//!
//! Version 1, which earlier versions wrote and which is still read: a version byte, the
//! member count (`u16`), then for each member its origin timestamp, its end (a flag byte,
//! then seconds and nanoseconds, zeros when it has none), the header's length (`u32`)
//! and bytes, the payload's crc32c (`u32`), its length (`u32`) and bytes.
//!
//! Each payload keeps its own checksum, checked on read like a single row's.

use bytes::{Buf, Bytes};

use super::{join, split};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The version byte of the encoding written.
const VERSION: u8 = 2;

/// The version byte of runs with whole headers and their payloads, still read.
const VERSION_1: u8 = 1;

/// The flag of a run whose payloads are in its row's object.
const IN_OBJECT: u8 = 1;

/// At most this many grains in a run.
pub const MAX_GRAINS: usize = 256;

/// At most this many bytes in a run, so that its row stays in one 8 KiB page,
/// uncompressed and not moved to TOAST (the table's `toast_tuple_target` is 8160).
pub const MAX_BYTES: usize = 7_800;

/// Only grains whose payload is at most this long join runs that hold their payloads.
pub const MAX_PAYLOAD: usize = 2_048;

/// The bytes of a run before its members.
pub const EMPTY_LEN: usize = 4;

/// The bytes LEB128 takes for `n`.
fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(buf: &mut Bytes) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        n |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// How much of `previous` a header keeps: the lengths of the shared prefix and of the
/// shared suffix after it.
fn shared(previous: &[u8], header: &[u8]) -> (usize, usize) {
    let prefix = previous
        .iter()
        .zip(header)
        .take_while(|(a, b)| a == b)
        .count();
    let room = previous.len().min(header.len()) - prefix;
    let suffix = previous[prefix..]
        .iter()
        .rev()
        .zip(header[prefix..].iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    (prefix, suffix)
}

/// At most this many bytes of headers in a decoded run: each header may repeat much of
/// the one before it, and a damaged run must not make them add up without end.
const MAX_HEADERS: usize = 8 << 20;

/// The bytes a member takes in a run after a member whose header was `previous` (none
/// for the first member).
pub fn member_len(
    previous: Option<&[u8]>,
    header: &[u8],
    has_end: bool,
    payload: usize,
    in_object: bool,
) -> usize {
    let (prefix, suffix) = shared(previous.unwrap_or_default(), header);
    let middle = header.len() - prefix - suffix;
    12 + 1
        + if has_end { 12 } else { 0 }
        + varint_len(prefix as u64)
        + varint_len(suffix as u64)
        + varint_len(middle as u64)
        + middle
        + 4
        + varint_len(payload as u64)
        + if in_object { 0 } else { payload }
}

/// Whether a member of `bytes` more fits in a run of `members` members taking `run`
/// bytes (with [`EMPTY_LEN`]), within [`MAX_GRAINS`] and [`MAX_BYTES`].
pub fn fits(members: usize, run: usize, bytes: usize) -> bool {
    members < MAX_GRAINS && run + bytes <= MAX_BYTES
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
    /// The payload's length.
    pub len: u64,
    /// The payload, when the run holds it; else it is in the row's object, `offset`
    /// bytes after the row's `object_offset`.
    pub payload: Option<Bytes>,
    /// Where the payload starts in the run's share of its object (the lengths of the
    /// members before it).
    pub offset: u64,
}

impl Member {
    /// Where the payload starts in its run's object, the run's first payload starting
    /// at `base` there; a damaged run whose payload would end past any offset fails.
    pub fn object_offset(&self, base: u64) -> Result<u64, StoreError> {
        base.checked_add(self.offset)
            .filter(|start| start.checked_add(self.len).is_some())
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "the grain at {} is past the end of any object",
                    self.timestamp
                ))
            })
    }
}

/// Builds a run, member by member, in time order.
#[derive(Debug)]
pub struct RunBuilder {
    buf: Vec<u8>,
    count: u16,
    in_object: bool,
    previous: Vec<u8>,
}

impl RunBuilder {
    /// An empty run, holding its payloads or (`in_object`) leaving them in its object.
    pub fn new(in_object: bool) -> RunBuilder {
        let mut buf = Vec::with_capacity(MAX_BYTES);
        buf.push(VERSION);
        buf.push(if in_object { IN_OBJECT } else { 0 });
        buf.extend_from_slice(&0u16.to_le_bytes());
        RunBuilder {
            buf,
            count: 0,
            in_object,
            previous: Vec::new(),
        }
    }

    /// Appends a member (later than the previous one: the caller's part); `payload` is
    /// only measured when the run leaves it in its object.
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
            None => self.buf.push(0),
        }
        let (prefix, suffix) = shared(&self.previous, header);
        let middle = &header[prefix..header.len() - suffix];
        put_varint(&mut self.buf, prefix as u64);
        put_varint(&mut self.buf, suffix as u64);
        put_varint(&mut self.buf, middle.len() as u64);
        self.buf.extend_from_slice(middle);
        self.previous.clear();
        self.previous.extend_from_slice(header);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        put_varint(&mut self.buf, payload.len() as u64);
        if !self.in_object {
            self.buf.extend_from_slice(payload);
        }
        self.count += 1;
    }

    /// The encoded run.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[2..4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Decodes a run; its members' payloads share `run`'s memory. Fails with
/// [`StoreError::Corrupt`] on anything but a well-formed run of members in strictly
/// increasing time order.
pub fn decode(run: &Bytes) -> Result<Vec<Member>, StoreError> {
    let mut rest = run.clone();
    if rest.remaining() < 3 {
        return Err(bad("is cut short"));
    }
    match rest.get_u8() {
        VERSION_1 => decode_1(rest),
        VERSION => decode_2(rest),
        version => Err(bad(&format!("has the unknown version {version}"))),
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::Corrupt(format!("a stored run of grains {what}"))
}

fn short() -> StoreError {
    bad("is cut short")
}

/// Appends `member` to `members`, refusing it out of time order.
fn append(members: &mut Vec<Member>, member: Member) -> Result<(), StoreError> {
    if members
        .last()
        .is_some_and(|m| m.timestamp >= member.timestamp)
    {
        return Err(bad("is out of time order"));
    }
    members.push(member);
    Ok(())
}

/// A member's timestamp and end, after which `rest` is at its header. Version 1 keeps
/// twelve bytes for an end the member does not have.
fn key(rest: &mut Bytes, version_1: bool) -> Result<(Timestamp, Option<Timestamp>), StoreError> {
    if rest.remaining() < 8 + 4 + 1 {
        return Err(short());
    }
    let timestamp = join(rest.get_i64_le(), rest.get_i32_le())?;
    let has_end = match rest.get_u8() {
        0 => false,
        1 => true,
        _ => return Err(bad("has a damaged member")),
    };
    if !has_end && !version_1 {
        return Ok((timestamp, None));
    }
    if rest.remaining() < 12 {
        return Err(short());
    }
    let (sec, nsec) = (rest.get_i64_le(), rest.get_i32_le());
    let end = if has_end {
        Some(join(sec, nsec)?)
    } else {
        None
    };
    Ok((timestamp, end))
}

/// The members of a version 1 run, after its version byte.
fn decode_1(mut rest: Bytes) -> Result<Vec<Member>, StoreError> {
    let count = usize::from(rest.get_u16_le());
    if count == 0 {
        return Err(bad("is empty"));
    }
    // A member takes at least 37 bytes: a damaged count reserves no more than the run.
    let mut members: Vec<Member> = Vec::with_capacity(count.min(rest.remaining() / 37));
    let mut offset = 0u64;
    for _ in 0..count {
        let (timestamp, end) = key(&mut rest, true)?;
        if rest.remaining() < 4 {
            return Err(short());
        }
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
        let len = payload_len as u64;
        append(
            &mut members,
            Member {
                timestamp,
                end,
                header,
                crc,
                len,
                payload: Some(payload),
                offset,
            },
        )?;
        offset += len;
    }
    if rest.has_remaining() {
        return Err(bad("has bytes after its last member"));
    }
    Ok(members)
}

/// The members of a version 2 run, after its version byte.
fn decode_2(mut rest: Bytes) -> Result<Vec<Member>, StoreError> {
    let flags = rest.get_u8();
    if flags & !IN_OBJECT != 0 {
        return Err(bad(&format!("has unknown flags {flags:#x}")));
    }
    let in_object = flags & IN_OBJECT != 0;
    if rest.remaining() < 2 {
        return Err(short());
    }
    let count = usize::from(rest.get_u16_le());
    if count == 0 {
        return Err(bad("is empty"));
    }
    // Every header, rebuilt one after another in one buffer.
    let mut headers: Vec<u8> = Vec::with_capacity(rest.remaining().min(count * 128));
    // A member takes at least 21 bytes: a damaged count reserves no more than the run.
    let room = count.min(rest.remaining() / 21);
    let mut spans: Vec<std::ops::Range<usize>> = Vec::with_capacity(room);
    let mut members: Vec<Member> = Vec::with_capacity(room);
    let mut offset = 0u64;
    for _ in 0..count {
        let (timestamp, end) = key(&mut rest, false)?;
        let mut length = || get_varint(&mut rest).ok_or_else(short);
        let (prefix, suffix, middle) = (length()?, length()?, length()?);
        let previous = spans.last().cloned().unwrap_or(0..0);
        if prefix.saturating_add(suffix) > previous.len() as u64 {
            return Err(bad("has a damaged member header"));
        }
        if middle > rest.remaining() as u64 {
            return Err(short());
        }
        let (prefix, suffix, middle) = (prefix as usize, suffix as usize, middle as usize);
        if headers.len() + prefix + middle + suffix > MAX_HEADERS {
            return Err(bad("has headers too long"));
        }
        let start = headers.len();
        headers.extend_from_within(previous.start..previous.start + prefix);
        headers.extend_from_slice(&rest.split_to(middle));
        headers.extend_from_within(previous.end - suffix..previous.end);
        spans.push(start..headers.len());
        if rest.remaining() < 4 {
            return Err(short());
        }
        let crc = rest.get_u32_le();
        let len = get_varint(&mut rest).ok_or_else(short)?;
        if len > u64::from(u32::MAX) {
            return Err(bad("has a damaged payload length"));
        }
        let payload = if in_object {
            None
        } else {
            if len > rest.remaining() as u64 {
                return Err(short());
            }
            Some(rest.split_to(len as usize))
        };
        append(
            &mut members,
            Member {
                timestamp,
                end,
                header: Bytes::new(),
                crc,
                len,
                payload,
                offset,
            },
        )?;
        offset = offset.checked_add(len).ok_or_else(|| bad("is too long"))?;
    }
    if rest.has_remaining() {
        return Err(bad("has bytes after its last member"));
    }
    let headers = Bytes::from(headers);
    for (member, span) in members.iter_mut().zip(spans) {
        member.header = headers.slice(span);
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
            len: payload.len() as u64,
            payload: Some(payload),
            offset: 0,
        }
    }

    /// `members` with their offsets, and without their payloads when `in_object`.
    fn as_decoded(members: &[Member], in_object: bool) -> Vec<Member> {
        let mut offset = 0;
        members
            .iter()
            .map(|m| {
                let mut m = m.clone();
                m.offset = offset;
                offset += m.len;
                if in_object {
                    m.payload = None;
                }
                m
            })
            .collect()
    }

    fn encode(members: &[Member], in_object: bool) -> Vec<u8> {
        let mut run = RunBuilder::new(in_object);
        let mut previous: Option<&[u8]> = None;
        let mut len = EMPTY_LEN;
        for m in members {
            let payload = m.payload.as_deref().unwrap();
            len += member_len(
                previous,
                &m.header,
                m.end.is_some(),
                payload.len(),
                in_object,
            );
            run.push(m.timestamp, m.end, &m.header, m.crc, payload);
            previous = Some(&m.header);
        }
        let run = run.finish();
        assert_eq!(run.len(), len, "member_len measures what push writes");
        run
    }

    /// A run as version 1 wrote it.
    fn encode_1(members: &[Member]) -> Vec<u8> {
        let mut out = vec![VERSION_1];
        out.extend_from_slice(&(members.len() as u16).to_le_bytes());
        for m in members {
            let (sec, nsec) = split(m.timestamp);
            out.extend_from_slice(&sec.to_le_bytes());
            out.extend_from_slice(&nsec.to_le_bytes());
            let (flag, (sec, nsec)) = match m.end {
                Some(end) => (1, split(end)),
                None => (0, (0, 0)),
            };
            out.push(flag);
            out.extend_from_slice(&sec.to_le_bytes());
            out.extend_from_slice(&nsec.to_le_bytes());
            out.extend_from_slice(&(m.header.len() as u32).to_le_bytes());
            out.extend_from_slice(&m.header);
            out.extend_from_slice(&m.crc.to_le_bytes());
            let payload = m.payload.as_deref().unwrap();
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        }
        out
    }

    /// Headers like a batch's: a common part, then bytes that change from grain to grain
    /// (or, for some, wholly different headers).
    fn members() -> impl Strategy<Value = Vec<Member>> {
        (
            prop::collection::vec(any::<u8>(), 0..60),
            prop::collection::vec(
                (
                    1u64..1_000_000_000_000,
                    prop::option::of(0u64..1_000_000_000),
                    prop::collection::vec(any::<u8>(), 0..20),
                    prop::option::of(prop::collection::vec(any::<u8>(), 0..80)),
                    prop::collection::vec(any::<u8>(), 0..300),
                ),
                1..40,
            ),
        )
            .prop_map(|(common, parts)| {
                let mut at = 1_700_000_000_000_000_000i128;
                parts
                    .into_iter()
                    .map(|(step, length, changing, other, payload)| {
                        at += i128::from(step);
                        let header = other.unwrap_or_else(|| {
                            let mut h = common.clone();
                            h.extend_from_slice(&changing);
                            h.extend_from_slice(&common);
                            h
                        });
                        member(at, length.map(|l| at + i128::from(l)), header, payload)
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn runs_decode_to_their_members(members in members(), in_object in any::<bool>()) {
            let run = Bytes::from(encode(&members, in_object));
            prop_assert_eq!(decode(&run).unwrap(), as_decoded(&members, in_object));
        }

        #[test]
        fn runs_of_the_first_version_still_decode(members in members()) {
            let run = Bytes::from(encode_1(&members));
            prop_assert_eq!(decode(&run).unwrap(), as_decoded(&members, false));
        }

        #[test]
        fn a_damaged_run_fails_or_decodes_without_panicking(
            members in members(),
            in_object in any::<bool>(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            for run in [encode(&members, in_object), encode_1(&members)] {
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
    }

    #[test]
    fn varints_round_trip_and_refuse_overlong_input() {
        for n in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            assert_eq!(out.len(), varint_len(n));
            assert_eq!(get_varint(&mut Bytes::from(out)), Some(n));
        }
        assert_eq!(get_varint(&mut Bytes::from_static(&[0x80; 11])), None);
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&mut Bytes::from(over)), None);
    }

    #[test]
    fn headers_that_differ_in_a_few_bytes_take_a_few_bytes() {
        let header = |t: u8| {
            let mut h = vec![7u8; 40];
            h.extend_from_slice(&[t, t]);
            h.extend_from_slice(&[9u8; 30]);
            h
        };
        assert_eq!(shared(&header(1), &header(2)), (40, 30));
        assert_eq!(shared(&header(1), &header(1)), (72, 0));
        assert_eq!(shared(&[], &header(1)), (0, 0));
        // The suffix never reaches back into the prefix.
        assert_eq!(shared(b"aaa", b"aaaa"), (3, 0));
        assert_eq!(shared(b"abab", b"ab"), (2, 0));
        let first = member_len(None, &header(1), false, 200, true);
        let next = member_len(Some(&header(1)), &header(2), false, 200, true);
        assert_eq!(first - next, 72 - 2);
        assert_eq!(next, 12 + 1 + 3 + 2 + 4 + 2);
        let inline = member_len(Some(&header(1)), &header(2), true, 200, false);
        assert_eq!(inline, next + 12 + 200);
    }

    #[test]
    fn members_out_of_order_are_refused() {
        let a = member(2_000, None, vec![1], vec![2]);
        let b = member(1_000, None, vec![1], vec![2]);
        for in_object in [false, true] {
            let run = Bytes::from(encode(&[a.clone(), b.clone()], in_object));
            assert!(matches!(decode(&run), Err(StoreError::Corrupt(_))));
            let run = Bytes::from(encode(&[a.clone(), a.clone()], in_object));
            assert!(matches!(decode(&run), Err(StoreError::Corrupt(_))));
        }
        let run = Bytes::from(encode_1(&[a.clone(), b]));
        assert!(matches!(decode(&run), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn unknown_versions_and_flags_are_refused() {
        let a = member(2_000, None, vec![1], vec![2]);
        let mut run = encode(std::slice::from_ref(&a), false);
        run[1] = 0x02;
        assert!(matches!(
            decode(&Bytes::from(run)),
            Err(StoreError::Corrupt(_))
        ));
        let mut run = encode(&[a], false);
        run[0] = 3;
        assert!(matches!(
            decode(&Bytes::from(run)),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn runs_stop_at_their_limits() {
        assert!(fits(MAX_GRAINS - 1, EMPTY_LEN, 0));
        assert!(!fits(MAX_GRAINS, EMPTY_LEN, 0));
        assert!(fits(1, MAX_BYTES - 10, 10));
        assert!(!fits(1, MAX_BYTES - 10, 11));
        // A run as large as its limits allow decodes whole.
        let mut run = RunBuilder::new(true);
        let mut members = 0;
        while members < MAX_GRAINS {
            members += 1;
            run.push(
                Timestamp::from_nanos(members as i128).unwrap(),
                None,
                &[1, 2, 3],
                0,
                &[0; 100],
            );
        }
        let decoded = decode(&Bytes::from(run.finish())).unwrap();
        assert_eq!(decoded.len(), MAX_GRAINS);
        assert_eq!(
            decoded[MAX_GRAINS - 1].offset,
            100 * (MAX_GRAINS as u64 - 1)
        );
    }
}
