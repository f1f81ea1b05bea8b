//! Payload objects: one object per committed batch holding the batch's large payloads
//! back to back, read back by byte ranges.
//!
//! The store is an `Arc<dyn ObjectStore>` whether the bytes live in S3, on a local disk
//! or in memory, under the prefix of the configured URL. Keys are
//! `grains/<flow id>/<random uuid>`: never reused, so an object is written once and a
//! reader never sees it change.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload,
};
use url::Url;

use super::cache::ObjectCache;
use crate::store::{FlowId, StoreError};

/// Where payload objects go, and how to reach an S3-compatible service.
#[derive(Clone, Debug, Default)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix`, `file:///path` or `memory://`.
    pub url: String,
    /// The S3 endpoint (for S3-compatible services); empty for AWS.
    pub s3_endpoint: String,
    /// The S3 region.
    pub s3_region: String,
    /// The access key id; empty to take credentials from the environment (`AWS_*`).
    pub s3_access_key_id: String,
    /// The secret access key.
    pub s3_secret_access_key: String,
    /// Whether plain `http://` endpoints are allowed.
    pub s3_allow_http: bool,
    /// Whether request bodies are covered by the SigV4 signature.
    pub s3_payload_signing: PayloadSigning,
}

/// Whether the SHA-256 of each uploaded object is part of its request's signature.
///
/// Signing the payload guards its bytes against changes on the way; it costs a SHA-256
/// pass over every byte in the replica and another in the object store. Over TLS the
/// bytes are guarded by TLS already. (AWS's own SDKs also upload to S3 over HTTPS with
/// `UNSIGNED-PAYLOAD`, adding a trailing checksum that S3 checks; grainstore adds none.)
/// Either way, every payload's crc32c is checked when it is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadSigning {
    /// Unsigned when plain HTTP is not allowed (`s3_allow_http = false`: every request
    /// then goes over HTTPS, whatever the endpoint's source), signed when it is.
    #[default]
    Auto,
    /// Always signed.
    Signed,
    /// Never signed.
    Unsigned,
}

impl ObjectStoreConfig {
    /// Whether uploads go with `UNSIGNED-PAYLOAD` instead of their body's SHA-256. The
    /// setting decides, not the `AWS_UNSIGNED_PAYLOAD` environment variable.
    pub fn unsigned_payload(&self) -> bool {
        match self.s3_payload_signing {
            PayloadSigning::Signed => false,
            PayloadSigning::Unsigned => true,
            // The endpoint may come from the environment (`AWS_ENDPOINT_URL_S3` even
            // overrides the configured one), so its scheme is not looked at: without
            // `s3_allow_http`, object_store refuses every plain-HTTP request.
            PayloadSigning::Auto => !self.s3_allow_http,
        }
    }
}

/// Why an object store URL is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(pub String);

/// Opens the object store of `config`, under the URL's prefix.
pub fn open(config: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>, UrlError> {
    let url = Url::parse(&config.url)
        .map_err(|e| UrlError(format!("{:?} is not a URL: {e}", config.url)))?;
    let prefix = url.path().trim_matches('/').to_owned();
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "memory" => Arc::new(object_store::memory::InMemory::new()),
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|()| UrlError(format!("{:?} is not a file path", config.url)))?;
            std::fs::create_dir_all(&path).map_err(|e| {
                UrlError(format!("cannot create directory {}: {e}", path.display()))
            })?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| UrlError(format!("cannot use {}: {e}", path.display())))?;
            return Ok(Arc::new(local));
        }
        "s3" => {
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| UrlError(format!("{:?} names no bucket", config.url)))?;
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_allow_http(config.s3_allow_http)
                .with_unsigned_payload(config.unsigned_payload())
                .with_retry(object_store::RetryConfig {
                    backoff: Default::default(),
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(30),
                });
            if !config.s3_region.is_empty() {
                builder = builder.with_region(&config.s3_region);
            }
            if !config.s3_endpoint.is_empty() {
                builder = builder.with_endpoint(&config.s3_endpoint);
            }
            if !config.s3_access_key_id.is_empty() {
                builder = builder
                    .with_access_key_id(&config.s3_access_key_id)
                    .with_secret_access_key(&config.s3_secret_access_key);
            }
            Arc::new(
                builder
                    .build()
                    .map_err(|e| UrlError(format!("cannot configure S3: {e}")))?,
            )
        }
        other => {
            return Err(UrlError(format!(
                "unsupported scheme {other:?}: use s3://bucket/prefix, file:///path or memory://"
            )));
        }
    };
    if prefix.is_empty() {
        Ok(store)
    } else {
        Ok(Arc::new(object_store::prefix::PrefixStore::new(
            store,
            Path::from(prefix),
        )))
    }
}

fn unavailable(e: object_store::Error) -> StoreError {
    StoreError::Unavailable(format!("object store: {e}"))
}

/// The payload objects of one store.
#[derive(Clone, Debug)]
pub struct Payloads {
    store: Arc<dyn ObjectStore>,
    /// This replica's copies of objects' bytes, if it keeps any.
    cache: Option<Arc<ObjectCache>>,
    /// Whether the cache also keeps the bytes uploaded.
    cache_uploads: bool,
}

/// The prefix under which every payload object lives.
pub const OBJECTS_PREFIX: &str = "grains";

impl Payloads {
    /// Payload objects in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Payloads {
        Payloads {
            store,
            cache: None,
            cache_uploads: false,
        }
    }

    /// As [`Payloads::new`], keeping the bytes read in `cache`, and those uploaded too
    /// if `uploads`.
    pub fn with_cache(
        store: Arc<dyn ObjectStore>,
        cache: Arc<ObjectCache>,
        uploads: bool,
    ) -> Payloads {
        Payloads {
            store,
            cache: Some(cache),
            cache_uploads: uploads,
        }
    }

    /// The cache, if there is one.
    pub fn cache(&self) -> Option<&Arc<ObjectCache>> {
        self.cache.as_ref()
    }

    /// Drops the cached bytes of `key` (bytes of it read from the cache failed a
    /// grain's checksum), so that the next read goes to the object store.
    pub fn forget_cached(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.forget(key);
        }
    }

    /// The underlying object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// A fresh key for an object of `flow`.
    pub fn new_key(flow: FlowId) -> String {
        format!(
            "{OBJECTS_PREFIX}/{}/{}",
            flow.simple(),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// Stores `parts` back to back as the object `key`. Large parts are sent as they
    /// are (the grains' own buffers, no copy); small ones are first copied together
    /// (see [`gather`]).
    pub async fn put(&self, key: &str, parts: Vec<Bytes>) -> Result<(), StoreError> {
        let parts = gather(parts);
        let cache = self.cache.as_ref().filter(|_| self.cache_uploads);
        let kept = cache.map(|_| back_to_back(0, &parts));
        let payload: PutPayload = parts.into_iter().collect();
        self.store
            .put(&Path::from(key), payload)
            .await
            .map_err(unavailable)?;
        if let (Some(cache), Some(writes)) = (cache, kept) {
            cache.store(key, writes);
        }
        Ok(())
    }

    /// Deletes `key`; an object already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        if let Some(cache) = &self.cache {
            cache.forget(key);
        }
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Deletes `key` in the background, for an object a failed commit left unreferenced
    /// (the garbage collector removes it later if this fails).
    pub fn discard(&self, key: String) {
        let payloads = self.clone();
        tokio::spawn(async move {
            if let Err(e) = payloads.delete(&key).await {
                tracing::debug!(error = %e, key, "cannot delete an unused object; gc will");
            }
        });
    }

    /// Fetches byte ranges of several objects: `wanted` is (key, range) per payload, the
    /// answer is in the same order. The ranges of one object are cut into [`spans`], each
    /// fetched in one call that coalesces its ranges; all spans are fetched concurrently.
    pub async fn fetch(&self, wanted: &[(&str, Range<u64>)]) -> Result<Fetched<Bytes>, StoreError> {
        fetch_by_object(wanted, |key, ranges| async move {
            if let Some(cache) = &self.cache
                && let Some(held) = cache.read(key, &ranges).await
            {
                return Ok((held.into_iter().map(Ok).collect(), true));
            }
            let got = self.store.get_ranges(&Path::from(key), &ranges).await?;
            if let Some(cache) = &self.cache {
                let writes = ranges.iter().map(|r| r.start).zip(got.iter().cloned());
                cache.store(key, writes.collect());
            }
            Ok((got.into_iter().map(Ok).collect(), false))
        })
        .await
    }

    /// As [`Payloads::fetch`], with each payload as the pieces in which the object
    /// store's answer arrived instead of one buffer: nothing copies them together, for
    /// GSF pages, which send large payloads on as pieces anyway. Each of the [`spans`] is
    /// one streamed request; its bytes between ranges are read and dropped. The ranges of
    /// one object must not overlap (each grain has its own bytes).
    pub async fn fetch_pieces(
        &self,
        wanted: &[(&str, Range<u64>)],
    ) -> Result<Fetched<Vec<Bytes>>, StoreError> {
        fetch_by_object(wanted, |key, ranges| async move {
            self.fetch_span(key, &ranges).await
        })
        .await
    }

    /// The pieces of `ranges` (sorted, not overlapping) of object `key`, read in one
    /// request for the span from the first's start to the last's end, or from the
    /// cache (the flag).
    async fn fetch_span(
        &self,
        key: &str,
        ranges: &[Range<u64>],
    ) -> Result<(Vec<Result<Vec<Bytes>, StoreError>>, bool), object_store::Error> {
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return Ok((Vec::new(), false));
        };
        debug_assert!(
            ranges.windows(2).all(|w| w[0].end <= w[1].start),
            "ranges sorted and apart"
        );
        if let Some(cache) = &self.cache
            && let Some(held) = cache.read(key, ranges).await
        {
            return Ok((held.into_iter().map(|b| Ok(vec![b])).collect(), true));
        }
        let mut cutter = Cutter::new(first.start, ranges);
        if first.start < last.end {
            let options = GetOptions {
                range: Some(GetRange::Bounded(first.start..last.end)),
                ..GetOptions::default()
            };
            let got = self.store.get_opts(&Path::from(key), options).await?;
            let mut chunks = match got.payload {
                // An answer over the network: its chunks as they arrive.
                GetResultPayload::Stream(_) => got.into_stream(),
                // A local file: one read of the span (its stream reads 8 KiB at a time).
                _ => futures::stream::once(got.bytes()).boxed(),
            };
            // The span's bytes as they arrived, for the cache (no copy: the pieces
            // cut from them share their buffers).
            let mut arrived = Vec::new();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                if self.cache.is_some() {
                    arrived.push(chunk.clone());
                }
                cutter.feed(chunk);
            }
            if let Some(cache) = &self.cache {
                cache.store(key, back_to_back(first.start, &arrived));
            }
        }
        Ok((cutter.finish(key), false))
    }

    /// Succeeds when the object store answers (a missing probe object is an answer).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self
            .store
            .head(&Path::from(format!("{OBJECTS_PREFIX}/.ping")))
            .await
        {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// Parts smaller than this are copied together before an upload.
const GATHER_BELOW: usize = 64 << 10;

/// `parts` with each stretch of small ones (below [`GATHER_BELOW`]) copied into one
/// buffer of up to [`PART_BYTES`]. The HTTP client writes an upload's body a part at a
/// time: a batch of a thousand 200-byte payloads was a thousand pieces to send.
fn gather(parts: Vec<Bytes>) -> Vec<Bytes> {
    if parts.iter().all(|p| p.len() >= GATHER_BELOW) {
        return parts;
    }
    let mut out = Vec::new();
    let mut small = bytes::BytesMut::new();
    for part in parts {
        if part.len() >= GATHER_BELOW {
            if !small.is_empty() {
                out.push(small.split().freeze());
            }
            out.push(part);
            continue;
        }
        if small.len() + part.len() > PART_BYTES as usize {
            out.push(small.split().freeze());
        }
        small.extend_from_slice(&part);
    }
    if !small.is_empty() {
        out.push(small.freeze());
    }
    out
}

/// `parts` paired with their offsets, back to back from `start`; empty parts (empty
/// payloads in a batch's object) are left out, as there is nothing of them to keep.
fn back_to_back(start: u64, parts: &[Bytes]) -> Vec<(u64, Bytes)> {
    let mut at = start;
    parts
        .iter()
        .map(|part| {
            at += part.len() as u64;
            (at - part.len() as u64, part.clone())
        })
        .filter(|(_, part)| !part.is_empty())
        .collect()
}

/// Fetches the (key, range) pairs of `wanted` by object: the ranges of one object, in
/// order of their starts, are cut into [`spans`], `get` makes one request for a span's
/// ranges and answers a result per range; all requests run concurrently, and each
/// result goes back to its place in `wanted`. A missing object fails its own ranges (as corrupt data: a
/// row refers to it); any other error of the object store fails the whole fetch.
async fn fetch_by_object<'k, T, Fut>(
    wanted: &[(&'k str, Range<u64>)],
    get: impl Fn(&'k str, Vec<Range<u64>>) -> Fut,
) -> Result<Fetched<T>, StoreError>
where
    Fut: std::future::Future<
            Output = Result<(Vec<Result<T, StoreError>>, bool), object_store::Error>,
        >,
{
    let mut by_key: HashMap<&'k str, Vec<usize>> = HashMap::new();
    for (i, (key, _)) in wanted.iter().enumerate() {
        by_key.entry(key).or_default().push(i);
    }
    let mut requests = Vec::new();
    for (key, mut indexes) in by_key {
        indexes.sort_by_key(|&i| wanted[i].1.start);
        for indexes in spans(&indexes, |i| &wanted[i].1) {
            let ranges = indexes.iter().map(|&i| wanted[i].1.clone()).collect();
            let request = get(key, ranges);
            requests.push(async move { (key, indexes, request.await) });
        }
    }
    let mut out: Vec<Option<Result<T, StoreError>>> = (0..wanted.len()).map(|_| None).collect();
    let mut from_cache = vec![false; wanted.len()];
    for (key, indexes, got) in futures::future::join_all(requests).await {
        match got {
            Ok((results, cached)) => {
                for (i, result) in indexes.into_iter().zip(results) {
                    out[i] = Some(result);
                    from_cache[i] = cached;
                }
            }
            Err(object_store::Error::NotFound { .. }) => {
                for i in indexes {
                    out[i] = Some(Err(StoreError::Corrupt(format!(
                        "payload object {key} is missing"
                    ))));
                }
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    let results = out
        .into_iter()
        .map(|r| {
            r.ok_or_else(|| StoreError::Corrupt("object store returned too few ranges".into()))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Fetched {
        results,
        from_cache,
    })
}

/// What [`Payloads::fetch`] and [`Payloads::fetch_pieces`] answer: a result per range
/// asked for, in order, and for each whether it came from the object cache.
#[derive(Debug)]
pub struct Fetched<T> {
    /// The bytes of each range, or its own error.
    pub results: Vec<Result<T, StoreError>>,
    /// Whether each was read from the cache rather than the object store.
    pub from_cache: Vec<bool>,
}

/// The bytes one request for ranges of one object asks for at most (a single range
/// larger than this is one request of its own).
const PART_BYTES: u64 = 2 << 20;

/// Ranges of one object further apart than this are fetched in separate requests
/// rather than reading the bytes between them.
const MAX_GAP: u64 = 64 << 10;

/// `indexes` (of ranges of one object, sorted by start) cut into spans of at most
/// [`PART_BYTES`] from the first's start to the last's end (gaps included), or of a
/// single larger range, and wherever a range starts more than [`MAX_GAP`] after the one
/// before ends.
///
/// A page of large grains is a few MiB of one object, back to back: fetched as one
/// request, it arrives at the speed of one stream of the object store. Served as
/// concurrent spans of at most 2 MiB, a single reader of 1 MiB grains from s3s-fs went
/// from 94–113 to 124–135 MB/s, and s3s-fs spent a third less CPU per byte.
fn spans<'a>(indexes: &[usize], range: impl Fn(usize) -> &'a Range<u64>) -> Vec<Vec<usize>> {
    let mut spans: Vec<Vec<usize>> = Vec::new();
    for &i in indexes {
        let r = range(i);
        if let Some(span) = spans.last_mut()
            && let (Some(&first), Some(&before)) = (span.first(), span.last())
            && r.start <= range(before).end.saturating_add(MAX_GAP)
            && r.end.saturating_sub(range(first).start) <= PART_BYTES
        {
            span.push(i);
        } else {
            spans.push(vec![i]);
        }
    }
    spans
}

/// Cuts the bytes of an object's span, arriving in chunks, into the pieces of the
/// ranges the span was fetched for (sorted, not overlapping, within the span).
struct Cutter<'a> {
    /// The object offset of the next byte to arrive.
    at: u64,
    ranges: &'a [Range<u64>],
    /// The pieces of the ranges done, and of the one in progress (the last).
    out: Vec<Vec<Bytes>>,
}

impl<'a> Cutter<'a> {
    fn new(start: u64, ranges: &'a [Range<u64>]) -> Cutter<'a> {
        let mut cutter = Cutter {
            at: start,
            ranges,
            out: vec![Vec::new()],
        };
        cutter.close_done();
        cutter
    }

    /// Moves on past every range that ends at or before `at` (empty ones included).
    fn close_done(&mut self) {
        while self.out.len() <= self.ranges.len() && self.ranges[self.out.len() - 1].end <= self.at
        {
            self.out.push(Vec::new());
        }
    }

    fn feed(&mut self, mut chunk: Bytes) {
        while !chunk.is_empty() && self.out.len() <= self.ranges.len() {
            let range = &self.ranges[self.out.len() - 1];
            let len = chunk.len() as u64;
            if self.at < range.start {
                // Bytes between ranges: dropped.
                let skip = (range.start - self.at).min(len);
                let _ = chunk.split_to(skip as usize);
                self.at += skip;
                self.close_done();
                continue;
            }
            let take = (range.end - self.at).min(len);
            let piece = chunk.split_to(take as usize);
            self.out
                .last_mut()
                .expect("a range in progress")
                .push(piece);
            self.at += take;
            self.close_done();
        }
    }

    /// Each range's pieces; a range the object ended before is an error of its own.
    fn finish(mut self, key: &str) -> Vec<Result<Vec<Bytes>, StoreError>> {
        let done = self.out.len() - 1;
        self.out.truncate(done);
        let mut out: Vec<Result<Vec<Bytes>, StoreError>> = self.out.into_iter().map(Ok).collect();
        for range in &self.ranges[done..] {
            out.push(Err(StoreError::Corrupt(format!(
                "payload object {key} ends before bytes {}..{}",
                range.start, range.end
            ))));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_parts_are_gathered_and_large_ones_sent_as_they_are() {
        let large = Bytes::from(vec![7u8; GATHER_BELOW]);
        let mut parts: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; (i % 700) as usize]))
            .collect();
        parts.insert(1500, large.clone());
        let gathered = gather(parts.clone());
        assert_eq!(gathered.concat(), parts.concat());
        // The stretches before and after the large part, the part itself in between.
        assert_eq!(gathered.len(), 3);
        assert_eq!(gathered[1].as_ptr(), large.as_ptr());
        assert!(gathered.iter().all(|p| p.len() as u64 <= PART_BYTES));
        // Enough small parts make more than one buffer.
        let many = vec![Bytes::from(vec![1u8; 60_000]); 100];
        let gathered = gather(many.clone());
        assert_eq!(gathered.concat(), many.concat());
        assert!(gathered.len() > 1 && gathered.iter().all(|p| p.len() as u64 <= PART_BYTES));
        let only_large = vec![large.clone(), large.clone()];
        assert_eq!(gather(only_large).len(), 2);
    }

    #[test]
    fn spans_of_back_to_back_ranges_hold_at_most_part_bytes_in_order() {
        const MIB: u64 = 1 << 20;
        let cut = |sizes: &[u64]| {
            let mut at = 0;
            let ranges: Vec<Range<u64>> = sizes
                .iter()
                .map(|&n| {
                    at += n;
                    at - n..at
                })
                .collect();
            let indexes: Vec<usize> = (0..ranges.len()).collect();
            spans(&indexes, |i| &ranges[i])
        };
        assert_eq!(cut(&[MIB; 5]), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(cut(&[5 * MIB, 10, 10]), vec![vec![0], vec![1, 2]]);
        assert_eq!(cut(&[10, 5 * MIB, 10]), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(
            cut(&[3 * MIB / 2; 4]),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
        assert_eq!(cut(&[100; 4]), vec![vec![0, 1, 2, 3]]);
        assert_eq!(cut(&[]), Vec::<Vec<usize>>::new());
    }

    /// Cuts `object[span]` arriving in chunks of `sizes` (cycled) into the pieces of
    /// `ranges`.
    fn cut(
        object: &[u8],
        ranges: &[Range<u64>],
        sizes: &[usize],
        arrived: usize,
    ) -> Vec<Result<Vec<u8>, String>> {
        let (start, end) = (
            ranges[0].start as usize,
            ranges.last().unwrap().end as usize,
        );
        let body = Bytes::copy_from_slice(&object[start..end.min(start + arrived)]);
        let mut cutter = Cutter::new(start as u64, ranges);
        let (mut at, mut i) = (0, 0);
        while at < body.len() {
            let n = sizes[i % sizes.len()].max(1).min(body.len() - at);
            cutter.feed(body.slice(at..at + n));
            at += n;
            i += 1;
        }
        cutter
            .finish("k")
            .into_iter()
            .map(|r| r.map(|pieces| pieces.concat()).map_err(|e| e.to_string()))
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn a_span_in_any_chunks_cuts_into_exactly_its_ranges(
            // Gaps and lengths of zero often: empty ranges, adjacent ranges.
            layout in proptest::collection::vec(
                (
                    proptest::prop_oneof![proptest::strategy::Just(0u64), 1u64..300],
                    proptest::prop_oneof![proptest::strategy::Just(0u64), 1u64..300],
                ),
                1..12,
            ),
            sizes in proptest::collection::vec(1usize..700, 1..8),
            short in 0usize..2000,
            truncated in proptest::bool::ANY,
        ) {
            // Ranges from (gap, length) pairs: sorted, not overlapping, some empty.
            let mut at = 0;
            let ranges: Vec<Range<u64>> = layout
                .iter()
                .map(|&(gap, len)| {
                    at += gap;
                    at += len;
                    at - len..at
                })
                .collect();
            let object: Vec<u8> = (0..at as usize + 10).map(|i| (i * 7 % 251) as u8).collect();
            let span = (ranges.last().unwrap().end - ranges[0].start) as usize;
            let arrived = if truncated { span.saturating_sub(short) } else { span };
            let got = cut(&object, &ranges, &sizes, arrived);
            proptest::prop_assert_eq!(got.len(), ranges.len());
            let reached = ranges[0].start as usize + arrived;
            for (r, got) in ranges.iter().zip(got) {
                if r.end as usize <= reached {
                    proptest::prop_assert_eq!(got, Ok(object[r.start as usize..r.end as usize].to_vec()));
                } else {
                    proptest::prop_assert!(got.unwrap_err().contains("ends before"));
                }
            }
        }
    }

    /// `fetch_pieces` answers what `fetch` answers, in the same order, for ranges of
    /// several objects asked in any order, in memory and in local files.
    #[tokio::test]
    async fn pieces_join_into_what_fetch_gives() {
        let dir = tempfile::tempdir().unwrap();
        let stores: [Arc<dyn ObjectStore>; 2] = [
            Arc::new(object_store::memory::InMemory::new()),
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap()),
        ];
        for store in stores {
            let payloads = Payloads::new(store);
            let object = |n: usize, salt: usize| -> Vec<u8> {
                (0..n).map(|i| ((i * 31 + salt) % 253) as u8).collect()
            };
            let (a, b) = (object(3 << 20, 1), object(300_000, 2));
            payloads.put("a", vec![Bytes::from(a)]).await.unwrap();
            payloads.put("b", vec![Bytes::from(b)]).await.unwrap();
            // Descending, adjacent, gapped, larger than a part, in two objects. (No empty
            // range: an empty payload is never fetched, see `snapshot`.)
            let wanted: Vec<(&str, Range<u64>)> = vec![
                ("a", 2_500_000..3_145_728),
                ("b", 200_000..299_000),
                ("a", 1_000..1_500_000),
                ("a", 0..1_000),
                ("b", 0..100),
                ("a", 1_500_000..1_500_001),
                ("b", 150_000..151_000),
            ];
            let whole = payloads.fetch(&wanted).await.unwrap().results;
            let pieces = payloads.fetch_pieces(&wanted).await.unwrap().results;
            assert_eq!(whole.len(), pieces.len());
            for ((w, p), (key, range)) in whole.into_iter().zip(pieces).zip(&wanted) {
                assert_eq!(p.unwrap().concat(), w.unwrap().to_vec(), "{key} {range:?}");
            }
            // A missing object fails its own ranges only.
            let missing = payloads
                .fetch_pieces(&[("a", 0..10), ("gone", 0..10)])
                .await
                .unwrap()
                .results;
            assert!(missing[0].is_ok());
            assert!(matches!(missing[1], Err(StoreError::Corrupt(_))));
        }
    }

    /// With a cache, the bytes read once (through either call, with gaps between the
    /// ranges of one request) are read again from it, not from the object store; the
    /// bytes uploaded are held only by a cache told to keep them.
    #[tokio::test]
    async fn what_was_read_once_is_read_again_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), 64 << 20).unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let object: Vec<u8> = (0..1_000_000).map(|i| (i % 251) as u8).collect();
        let settled = || async {
            for _ in 0..5000 {
                if cache.stats().pending_bytes == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            panic!("the cache's stores never finished: {:?}", cache.stats());
        };
        // Uploaded without a cache, or with one that keeps only what is read: nothing
        // of it is held.
        Payloads::new(Arc::clone(&store))
            .put("a", vec![Bytes::from(object.clone())])
            .await
            .unwrap();
        let payloads = Payloads::with_cache(store, Arc::clone(&cache), false);
        payloads
            .put("b", vec![Bytes::from(object.clone())])
            .await
            .unwrap();
        settled().await;
        assert_eq!(cache.stats(), Default::default());
        // Gaps of 1,000 bytes: one request per call, its gaps not wanted.
        let wanted_of = |key: &'static str| -> Vec<(&'static str, Range<u64>)> {
            (0..10)
                .map(|i| (key, i * 11_000..i * 11_000 + 10_000))
                .collect()
        };
        let wanted = wanted_of("a");
        let expect = |r: &Range<u64>| object[r.start as usize..r.end as usize].to_vec();
        for round in 0..3 {
            let whole = payloads.fetch(&wanted).await.unwrap();
            settled().await;
            let pieces = payloads.fetch_pieces(&wanted).await.unwrap();
            let cached = round > 0;
            assert_eq!(whole.from_cache, vec![cached; wanted.len()]);
            assert_eq!(pieces.from_cache, vec![true; wanted.len()]);
            let (whole, pieces) = (whole.results, pieces.results);
            for ((w, p), (_, r)) in whole.into_iter().zip(pieces).zip(&wanted) {
                assert_eq!(w.unwrap().to_vec(), expect(r));
                assert_eq!(p.unwrap().concat(), expect(r));
            }
            settled().await;
            let stats = cache.stats();
            // The first call missed and stored; every one after it hit.
            assert_eq!((stats.misses, stats.hits), (1, 2 * round + 1), "{stats:?}");
        }
        // A range of the object not read before goes to the object store.
        let other = payloads
            .fetch(&[("a", 500_000..500_010)])
            .await
            .unwrap()
            .results;
        assert_eq!(
            other[0].as_ref().unwrap().to_vec(),
            expect(&(500_000..500_010))
        );
        assert_eq!(cache.stats().misses, 2);

        // One that keeps uploads too serves them without asking the object store.
        let store = Arc::clone(payloads.store());
        let payloads = Payloads::with_cache(store, Arc::clone(&cache), true);
        payloads
            .put("c", vec![Bytes::from(object.clone())])
            .await
            .unwrap();
        settled().await;
        let read = payloads.fetch(&wanted_of("c")).await.unwrap();
        assert_eq!(read.from_cache, vec![true; wanted.len()]);
        for (got, (_, r)) in read.results.into_iter().zip(&wanted) {
            assert_eq!(got.unwrap().to_vec(), expect(r));
        }
        assert_eq!(cache.stats().misses, 2);
    }

    #[test]
    fn spans_break_where_ranges_lie_far_apart() {
        let ranges = [
            0..100,
            100..200,
            200 + MAX_GAP..300 + MAX_GAP,
            301 + 2 * MAX_GAP..400 + 2 * MAX_GAP,
        ];
        let indexes: Vec<usize> = (0..ranges.len()).collect();
        assert_eq!(
            spans(&indexes, |i| &ranges[i]),
            vec![vec![0, 1, 2], vec![3]]
        );
        const MIB: u64 = 1 << 20;
        let large = [0..MIB, MIB..2 * MIB, 2 * MIB..3 * MIB];
        assert_eq!(spans(&[0, 1, 2], |i| &large[i]), vec![vec![0, 1], vec![2]]);
        // Gaps count towards a span's size.
        let gapped: Vec<Range<u64>> = (0..128)
            .map(|i| i * (16_385 + MAX_GAP)..i * (16_385 + MAX_GAP) + 16_385)
            .collect();
        let indexes: Vec<usize> = (0..gapped.len()).collect();
        let cut = spans(&indexes, |i| &gapped[i]);
        assert!(cut.len() > 1);
        for span in &cut {
            let (first, last) = (&gapped[span[0]], &gapped[*span.last().unwrap()]);
            assert!(last.end - first.start <= PART_BYTES, "{first:?}..{last:?}");
        }
        assert_eq!(cut.concat(), indexes);
    }

    #[test]
    fn payloads_are_signed_where_plain_http_is_allowed_unless_told_otherwise() {
        let config = |allow_http, signing| ObjectStoreConfig {
            s3_allow_http: allow_http,
            s3_payload_signing: signing,
            ..ObjectStoreConfig::default()
        };
        use PayloadSigning::*;
        assert!(config(false, Auto).unsigned_payload());
        assert!(!config(true, Auto).unsigned_payload());
        assert!(config(true, Unsigned).unsigned_payload());
        assert!(config(false, Unsigned).unsigned_payload());
        assert!(!config(false, Signed).unsigned_payload());
        assert!(!config(true, Signed).unsigned_payload());
    }
}
