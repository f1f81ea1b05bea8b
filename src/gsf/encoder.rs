//! [`GsfEncoder`]: a streaming GSF version 9 writer producing `Bytes` chunks.
//!
//! The output is what `mediagrains`' `GSFEncoder(streaming=True)` writes: the file
//! header and `head` (segment counts -1, since a stream does not know them), one `grai`
//! block per grain, then the terminator. Each grain becomes two chunks — a small header
//! chunk and the payload `Bytes` itself — so payloads are never copied.

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::GsfError;
use super::head::{GsfDateTime, GsfHead, GsfSegment, GsfTag};
use crate::grain::Grain;
use crate::grain::wire::{gbhd_size, write_gbhd};

/// The terminator block: an empty `grai`.
const TERMINATOR: &[u8] = b"grai\0\0\0\0";

/// The chunks of one encoded grain, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrainChunks {
    /// The `grai` block header, local id, `gbhd` block and `grdt` block header.
    pub header: Bytes,
    /// The payload, the same `Bytes` as the grain's (not copied).
    pub payload: Bytes,
}

impl IntoIterator for GrainChunks {
    type Item = Bytes;
    type IntoIter = std::array::IntoIter<Bytes, 2>;

    fn into_iter(self) -> Self::IntoIter {
        [self.header, self.payload].into_iter()
    }
}

/// A streaming GSF version 9 encoder.
///
/// ```
/// # use grainstore::gsf::{GsfEncoder, GsfDateTime};
/// # fn demo(flow_id: uuid::Uuid, grains: Vec<grainstore::grain::Grain>) -> Result<(), grainstore::gsf::GsfError> {
/// let mut encoder = GsfEncoder::new(uuid::Uuid::new_v4(), GsfDateTime::now());
/// encoder.add_flow_segment(flow_id)?;
/// let mut body = vec![encoder.start()?];
/// for grain in &grains {
///     body.extend(encoder.encode_grain(grain)?);
/// }
/// body.push(encoder.finish());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GsfEncoder {
    head: GsfHead,
    /// Which segment each flow's grains go to (`add_flow_segment`).
    flows: Vec<(Uuid, u16)>,
    started: bool,
}

impl GsfEncoder {
    /// An encoder for a file with this id and creation time, no segments or tags yet.
    pub fn new(id: Uuid, created: GsfDateTime) -> Self {
        GsfEncoder {
            head: GsfHead::new(id, created),
            flows: Vec::new(),
            started: false,
        }
    }

    /// An encoder writing this head (its version is ignored: the encoder writes 9.0).
    pub fn with_head(head: GsfHead) -> Self {
        GsfEncoder {
            head: GsfHead {
                major: 9,
                minor: 0,
                ..head
            },
            flows: Vec::new(),
            started: false,
        }
    }

    /// The head as it will be (or was) written.
    pub fn head(&self) -> &GsfHead {
        &self.head
    }

    fn not_started(&self, what: &str) -> Result<(), GsfError> {
        if self.started {
            return Err(GsfError::Encode(format!(
                "cannot {what} after the head was written"
            )));
        }
        Ok(())
    }

    /// Adds a file tag. Only before [`start`](Self::start).
    pub fn add_tag(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), GsfError> {
        self.not_started("add a tag")?;
        self.head.tags.push(GsfTag::new(key, value));
        Ok(())
    }

    /// Adds a segment. Only before [`start`](Self::start).
    pub fn add_segment(&mut self, segment: GsfSegment) -> Result<(), GsfError> {
        self.not_started("add a segment")?;
        self.head.segments.push(segment);
        Ok(())
    }

    /// Adds a segment for one flow's grains (a fresh segment id, the next local id,
    /// count -1) and returns its local id; [`encode_grain`](Self::encode_grain) sends
    /// the flow's grains there. Adding the same flow again returns the existing segment.
    pub fn add_flow_segment(&mut self, flow_id: Uuid) -> Result<u16, GsfError> {
        if let Some(&(_, local_id)) = self.flows.iter().find(|(f, _)| *f == flow_id) {
            return Ok(local_id);
        }
        self.not_started("add a segment")?;
        let local_id = self
            .head
            .segments
            .iter()
            .map(|s| s.local_id)
            .max()
            .map_or(Some(1), |m| m.checked_add(1))
            .ok_or_else(|| GsfError::Encode("no segment local id left".into()))?;
        self.head.segments.push(GsfSegment {
            local_id,
            id: Uuid::new_v4(),
            count: -1,
            tags: Vec::new(),
            flow: None,
        });
        self.flows.push((flow_id, local_id));
        Ok(local_id)
    }

    /// The file header and `head` block: the first chunk of the stream.
    pub fn start(&mut self) -> Result<Bytes, GsfError> {
        self.not_started("start")?;
        self.head.validate()?;
        self.started = true;
        let mut out = Vec::with_capacity(256);
        self.head.write(&mut out);
        Ok(Bytes::from(out))
    }

    /// Encodes a grain into the segment of its flow (see
    /// [`add_flow_segment`](Self::add_flow_segment)).
    pub fn encode_grain(&self, grain: &Grain) -> Result<GrainChunks, GsfError> {
        let flow_id = grain.flow_id();
        let local_id = self
            .flows
            .iter()
            .find(|(f, _)| *f == flow_id)
            .map(|&(_, l)| l)
            .ok_or_else(|| GsfError::Encode(format!("no segment for flow {flow_id}")))?;
        Ok(encode_grain(local_id, grain))
    }

    /// Encodes a grain into the segment `local_id`, which must be in the head.
    pub fn encode_grain_in(&self, local_id: u16, grain: &Grain) -> Result<GrainChunks, GsfError> {
        if !self.head.segments.iter().any(|s| s.local_id == local_id) {
            return Err(GsfError::Encode(format!(
                "no segment with local id {local_id}"
            )));
        }
        Ok(encode_grain(local_id, grain))
    }

    /// The terminator block: the last chunk of the stream.
    pub fn finish(&self) -> Bytes {
        Bytes::from_static(TERMINATOR)
    }
}

/// Encodes one grain of segment `local_id` as `mediagrains` does: the header chunk
/// (`grai`, local id, `gbhd`, `grdt` header) and the payload.
pub fn encode_grain(local_id: u16, grain: &Grain) -> GrainChunks {
    let header = grain.header();
    let gbhd = gbhd_size(header);
    let payload = grain.payload().clone();
    let mut out = Vec::with_capacity(GRAIN_FRAMING + gbhd);
    put_grai_start(&mut out, local_id, gbhd, payload.len());
    write_gbhd(header, &mut out);
    put_grdt_start(&mut out, payload.len());
    GrainChunks {
        header: Bytes::from(out),
        payload,
    }
}

/// The bytes of a grain block besides its `gbhd` block and payload: `grai` with its
/// size and the local id, and the `grdt` block's tag and size.
const GRAIN_FRAMING: usize = 10 + 8;

/// Appends the start of a `grai` block: its tag and size (from the sizes of the `gbhd`
/// block and the payload that will follow) and the segment's local id.
fn put_grai_start(out: &mut impl BufMut, local_id: u16, gbhd_len: usize, payload_len: usize) {
    out.put_slice(b"grai");
    // Grain::new bounds payload and header sizes so that this fits in a u32.
    let size = GRAIN_FRAMING + gbhd_len + payload_len;
    out.put_u32_le(u32::try_from(size).unwrap_or(u32::MAX));
    out.put_u16_le(local_id);
}

/// Appends the tag and size of a `grdt` block whose payload follows.
fn put_grdt_start(out: &mut impl BufMut, payload_len: usize) {
    out.put_slice(b"grdt");
    out.put_u32_le(u32::try_from(8 + payload_len).unwrap_or(u32::MAX));
}

/// Grain blocks of one segment gathered into a few chunks, for a store that reads a
/// page of grains at a time: each grain's framing, its `gbhd` block and its payload
/// (when smaller than [`GsfBlocks::COPY_BELOW`]) are copied into shared chunks, larger
/// payloads are kept as the `Bytes` they came in. The output is byte for byte what
/// [`encode_grain`] gives for the same grains.
#[derive(Debug)]
pub struct GsfBlocks {
    local_id: u16,
    chunk: BytesMut,
    pieces: Vec<Bytes>,
    grains: usize,
}

impl GsfBlocks {
    /// Payloads smaller than this are copied into the shared chunk.
    pub const COPY_BELOW: usize = 16 << 10;
    /// A shared chunk is closed once it reaches this size.
    const CHUNK: usize = 64 << 10;

    /// Empty, for grains of segment `local_id`.
    pub fn new(local_id: u16) -> GsfBlocks {
        GsfBlocks {
            local_id,
            chunk: BytesMut::new(),
            pieces: Vec::new(),
            grains: 0,
        }
    }

    /// Adds a grain.
    pub fn push(&mut self, grain: &Grain) {
        let mut gbhd = Vec::with_capacity(gbhd_size(grain.header()));
        write_gbhd(grain.header(), &mut gbhd);
        self.push_parts(&gbhd, grain.payload(), || grain.payload().clone());
    }

    /// Adds a grain whose `gbhd` block is already encoded (a store keeps it so):
    /// `payload` is copied when small, else `shared` gives it as `Bytes` to pass on
    /// (the payload's own, or a copy when it has none).
    pub fn push_parts(&mut self, gbhd: &[u8], payload: &[u8], shared: impl FnOnce() -> Bytes) {
        if self.start_grain(gbhd, payload.len()) {
            self.chunk.put_slice(payload);
        } else {
            self.pieces.push(shared());
        }
    }

    /// As [`GsfBlocks::push_parts`], for a payload that is the concatenation of
    /// `pieces` (as they arrived from an object store): copied when small, else passed
    /// on piece by piece, consecutive pieces smaller than [`GsfBlocks::COPY_BELOW`]
    /// joined into one, so that a payload that arrived a few KiB at a time does not go
    /// out as many tiny writes.
    pub fn push_pieces(&mut self, gbhd: &[u8], pieces: Vec<Bytes>) {
        let len = pieces.iter().map(Bytes::len).sum();
        if self.start_grain(gbhd, len) {
            for piece in &pieces {
                self.chunk.put_slice(piece);
            }
            return;
        }
        let small = |piece: &Bytes| piece.len() < Self::COPY_BELOW;
        let mut joined =
            BytesMut::with_capacity(pieces.iter().filter(|p| small(p)).map(Bytes::len).sum());
        for piece in pieces {
            if small(&piece) {
                joined.put_slice(&piece);
                continue;
            }
            if !joined.is_empty() {
                self.pieces.push(joined.split().freeze());
            }
            self.pieces.push(piece);
        }
        if !joined.is_empty() {
            self.pieces.push(joined.freeze());
        }
    }

    /// Writes a grain's framing and `gbhd` block into the shared chunk; true when its
    /// payload of `payload_len` bytes is to be copied after them, false when the chunk
    /// was closed for the payload to follow as pieces of its own.
    fn start_grain(&mut self, gbhd: &[u8], payload_len: usize) -> bool {
        if self.chunk.len() >= Self::CHUNK {
            self.close_chunk();
        }
        let copied = payload_len < Self::COPY_BELOW;
        let needed = GRAIN_FRAMING + gbhd.len() + if copied { payload_len } else { 0 };
        // A new chunk when this one is full: room for a whole chunk at once, not one
        // grain at a time (and never for a payload that is not copied).
        if self.chunk.capacity() - self.chunk.len() < needed {
            self.chunk.reserve(needed.max(Self::CHUNK));
        }
        put_grai_start(&mut self.chunk, self.local_id, gbhd.len(), payload_len);
        self.chunk.put_slice(gbhd);
        put_grdt_start(&mut self.chunk, payload_len);
        self.grains += 1;
        if !copied {
            self.close_chunk();
        }
        copied
    }

    fn close_chunk(&mut self) {
        if !self.chunk.is_empty() {
            self.pieces.push(self.chunk.split().freeze());
        }
    }

    /// How many grains were added.
    pub fn grains(&self) -> usize {
        self.grains
    }

    /// Whether no grain was added.
    pub fn is_empty(&self) -> bool {
        self.grains == 0
    }

    /// The blocks, in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        self.close_chunk();
        self.pieces
    }
}

/// Encodes a whole file in one buffer: `head` (counts set to the number of grains per
/// segment), the grains in order, the terminator. Every grain's `local_id` must be a
/// segment of `head`. A convenience for tests and small responses.
pub fn encode_file(head: &GsfHead, grains: &[(u16, Grain)]) -> Result<Bytes, GsfError> {
    let mut head = GsfHead {
        major: 9,
        minor: 0,
        ..head.clone()
    };
    for seg in &mut head.segments {
        seg.count = grains.iter().filter(|(l, _)| *l == seg.local_id).count() as i64;
    }
    let mut encoder = GsfEncoder::with_head(head);
    let mut out = encoder.start()?.to_vec();
    for (local_id, grain) in grains {
        let chunks = encoder.encode_grain_in(*local_id, grain)?;
        out.extend_from_slice(&chunks.header);
        out.extend_from_slice(&chunks.payload);
    }
    out.extend_from_slice(&encoder.finish());
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `push_pieces` writes the bytes `push_parts` writes for the joined payload; pieces
    /// under `COPY_BELOW` in a row go out joined, larger ones as they came.
    #[test]
    fn pieces_encode_as_their_joined_payload() {
        let gbhd = b"gbhd-of-some-grain".to_vec();
        let piece = |n: usize, b: u8| Bytes::from(vec![b; n]);
        let cases: Vec<Vec<Bytes>> = vec![
            vec![],
            vec![piece(100, 1), piece(200, 2)],
            vec![piece(4096, 1); 8],
            vec![
                piece(20_000, 1),
                piece(4096, 2),
                piece(4096, 3),
                piece(30_000, 4),
            ],
            vec![piece(4096, 1), piece(70_000, 2), piece(1, 3)],
        ];
        for pieces in cases {
            let payload: Vec<u8> = pieces.concat();
            let mut whole = GsfBlocks::new(3);
            whole.push_parts(&gbhd, &payload, || Bytes::copy_from_slice(&payload));
            let mut cut = GsfBlocks::new(3);
            cut.push_pieces(&gbhd, pieces.clone());
            let cut = cut.finish();
            assert_eq!(cut.concat(), whole.finish().concat());
            if payload.len() >= GsfBlocks::COPY_BELOW {
                // After the framing: no two small pieces in a row, large ones uncopied.
                let out = &cut[1..];
                assert!(
                    out.windows(2).all(|w| w[0].len() >= GsfBlocks::COPY_BELOW
                        || w[1].len() >= GsfBlocks::COPY_BELOW)
                );
                for large in pieces.iter().filter(|p| p.len() >= GsfBlocks::COPY_BELOW) {
                    assert!(out.iter().any(|c| c.as_ptr() == large.as_ptr()));
                }
            }
        }
    }
}
