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
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

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
}

/// The prefix under which every payload object lives.
pub const OBJECTS_PREFIX: &str = "grains";

impl Payloads {
    /// Payload objects in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Payloads {
        Payloads { store }
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

    /// Stores `parts` back to back as the object `key` (no copy: the parts are the
    /// grains' own buffers).
    pub async fn put(&self, key: &str, parts: Vec<Bytes>) -> Result<(), StoreError> {
        let payload: PutPayload = parts.into_iter().collect();
        self.store
            .put(&Path::from(key), payload)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Deletes `key`; an object already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
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
    /// answer is in the same order. The ranges of one object are cut into parts of at most
    /// [`PART_BYTES`] (or one larger range), each fetched in one call that coalesces
    /// adjacent ranges; all parts are fetched concurrently.
    pub async fn fetch(
        &self,
        wanted: &[(&str, Range<u64>)],
    ) -> Result<Vec<Result<Bytes, StoreError>>, StoreError> {
        let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (key, _)) in wanted.iter().enumerate() {
            by_key.entry(key).or_default().push(i);
        }
        let fetches = by_key.into_iter().flat_map(|(key, indexes)| {
            parts(&indexes, |i| &wanted[i].1)
                .into_iter()
                .map(move |indexes| {
                    let ranges: Vec<Range<u64>> =
                        indexes.iter().map(|&i| wanted[i].1.clone()).collect();
                    async move {
                        let got = self.store.get_ranges(&Path::from(key), &ranges).await;
                        (key, indexes, got)
                    }
                })
        });
        let mut out: Vec<Option<Result<Bytes, StoreError>>> =
            (0..wanted.len()).map(|_| None).collect();
        for (key, indexes, got) in futures::future::join_all(fetches).await {
            match got {
                Ok(parts) => {
                    for (i, bytes) in indexes.into_iter().zip(parts) {
                        out[i] = Some(Ok(bytes));
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
        out.into_iter()
            .map(|r| {
                r.ok_or_else(|| StoreError::Corrupt("object store returned too few ranges".into()))
            })
            .collect()
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

/// The bytes one request for ranges of one object asks for at most (a single range
/// larger than this is one request of its own).
const PART_BYTES: u64 = 2 << 20;

/// `indexes` (of ranges of one object, in order) cut into runs of at most
/// [`PART_BYTES`], or of a single larger range.
///
/// A page of large grains is a few MiB of one object, back to back: fetched as one
/// request, it arrives at the speed of one stream of the object store. Served as
/// concurrent parts, a single reader of 1 MiB grains from s3s-fs went from 94–113 to
/// 124–135 MB/s, and s3s-fs spent a third less CPU per byte.
fn parts<'a>(indexes: &[usize], range: impl Fn(usize) -> &'a Range<u64>) -> Vec<Vec<usize>> {
    let mut parts: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for &i in indexes {
        let r = range(i);
        let len = r.end.saturating_sub(r.start);
        if parts.is_empty() || bytes + len > PART_BYTES {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += len;
        parts.last_mut().expect("a part").push(i);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_hold_at_most_part_bytes_and_keep_every_index_in_order() {
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
            parts(&indexes, |i| &ranges[i])
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
