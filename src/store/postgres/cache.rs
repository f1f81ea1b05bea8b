//! A replica's cache of payload objects on its own disk.
//!
//! Objects are never rewritten (a key is used once), so a copy never goes stale. The
//! bytes of an object that a replica reads from the object store (or uploads, if
//! `storage.object_cache_uploads` says so) are kept at their offsets in a file of the
//! cache directory (a sparse file when only parts were read), and a later read of bytes
//! the file holds is served from it instead of the object store: nothing is fetched
//! twice to fill the cache. The cache holds at
//! most its configured bytes; past them the least recently used objects are dropped.
//!
//! It is emptied at start (a copy left by a crash may be incomplete), and nothing else
//! depends on it: a file missing or shorter than expected sends the read to the object
//! store, and so does a payload that fails its grain's checksum (the caller then
//! [forgets](ObjectCache::forget) the object).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// The part of the cache's bytes one object may take at most.
const MAX_SHARE: u64 = 8;

/// Bytes handed to the cache and not yet written at most: past it (a disk slower than
/// the traffic) bytes are not kept, rather than held in memory.
const MAX_PENDING: u64 = 64 << 20;

/// The file that marks the directory as one cache's, locked while the cache is open.
const LOCK_FILE: &str = ".lock";

/// Payload objects' bytes kept on local disk, the least recently used dropped first.
#[derive(Debug)]
pub struct ObjectCache {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    counts: Counts,
    /// Locked for the cache's life: two processes never share the directory.
    _lock: File,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Last use to key: the order in which to drop.
    by_use: BTreeMap<u64, String>,
    /// Bytes held, over all entries.
    bytes: u64,
    /// Bytes handed to [`ObjectCache::store`] and not written yet.
    pending: u64,
    /// Ticks for last uses and for file generations.
    clock: u64,
}

/// One object's bytes held.
#[derive(Debug)]
struct Entry {
    /// Part of the file's name: a file written for an entry since dropped is never
    /// taken for a later one's.
    generation: u64,
    /// The byte ranges the file holds, sorted and apart (neither overlapping nor
    /// touching).
    held: Vec<Range<u64>>,
    /// Their total length.
    bytes: u64,
    /// Bytes being written for it, counted against its share.
    reserved: u64,
    /// Writes under way.
    writers: u32,
    /// Its place in `by_use`; 0 until its first bytes are written.
    used: u64,
}

#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    skipped: AtomicU64,
    dropped: AtomicU64,
}

/// A snapshot of the cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that went to the object store.
    pub misses: u64,
    /// Bytes written to the cache.
    pub stored_bytes: u64,
    /// Bytes not kept because too much was waiting to be written.
    pub skipped_bytes: u64,
    /// Bytes waiting to be written now.
    pub pending_bytes: u64,
    /// Objects dropped (for room, deleted, or failing a checksum).
    pub dropped: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Objects held now.
    pub objects: u64,
}

impl CacheStats {
    /// The figures as metrics.
    pub fn metrics(&self) -> Vec<crate::store::StoreMetric> {
        let metric = |name, help, counter, value| crate::store::StoreMetric {
            name,
            help,
            counter,
            value,
        };
        vec![
            metric(
                "grainstore_object_cache_hits_total",
                "Payload object reads served from this replica's object cache.",
                true,
                self.hits,
            ),
            metric(
                "grainstore_object_cache_misses_total",
                "Payload object reads that went to the object store.",
                true,
                self.misses,
            ),
            metric(
                "grainstore_object_cache_stored_bytes_total",
                "Bytes written to the object cache.",
                true,
                self.stored_bytes,
            ),
            metric(
                "grainstore_object_cache_skipped_bytes_total",
                "Bytes not kept in the object cache because too much was waiting to be written.",
                true,
                self.skipped_bytes,
            ),
            metric(
                "grainstore_object_cache_dropped_total",
                "Objects dropped from the object cache: for room, deleted, or failing a checksum.",
                true,
                self.dropped,
            ),
            metric(
                "grainstore_object_cache_pending_bytes",
                "Bytes waiting to be written to the object cache.",
                false,
                self.pending_bytes,
            ),
            metric(
                "grainstore_object_cache_bytes",
                "Bytes held in the object cache.",
                false,
                self.bytes,
            ),
            metric(
                "grainstore_object_cache_objects",
                "Objects with bytes in the object cache.",
                false,
                self.objects,
            ),
        ]
    }
}

impl ObjectCache {
    /// A cache of at most `max_bytes` in `dir`, which is created, locked against other
    /// processes, and emptied of the files an earlier run left. Blocks on the file
    /// system.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<ObjectCache> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let lock = private_file(&dir.join(LOCK_FILE), false)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::other(
                    "another process uses this object cache (each replica needs a \
                     storage.data_dir of its own)",
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot lock it ({e}; it must be on a local disk)"),
                ));
            }
        }
        let mut removed = 0u64;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() && entry.file_name() != LOCK_FILE {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(dir = %dir.display(), files = removed, "object cache emptied");
        }
        Ok(ObjectCache {
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::default(),
            counts: Counts::default(),
            _lock: lock,
        })
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let state = self.lock();
        CacheStats {
            hits: self.counts.hits.load(Ordering::Relaxed),
            misses: self.counts.misses.load(Ordering::Relaxed),
            stored_bytes: self.counts.stored.load(Ordering::Relaxed),
            skipped_bytes: self.counts.skipped.load(Ordering::Relaxed),
            pending_bytes: state.pending,
            dropped: self.counts.dropped.load(Ordering::Relaxed),
            bytes: state.bytes,
            objects: state.entries.values().filter(|e| e.bytes > 0).count() as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every step that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file of `key`'s entry of `generation`: the key's characters other than ASCII
    /// letters and digits are escaped, so distinct keys get distinct names and none
    /// leaves the directory.
    fn path(&self, key: &str, generation: u64) -> PathBuf {
        let mut name = String::with_capacity(key.len() + 24);
        for c in key.chars() {
            if c.is_ascii_alphanumeric() {
                name.push(c);
            } else {
                name.push_str(&format!("-{:x}-", c as u32));
            }
        }
        name.push_str(&format!(".{generation}"));
        self.dir.join(name)
    }

    /// The generation of `key`'s entry if it holds every one of `ranges`.
    fn holding(state: &State, key: &str, ranges: &[Range<u64>]) -> Option<u64> {
        let entry = state.entries.get(key)?;
        if ranges.is_empty() {
            return None;
        }
        ranges
            .iter()
            .all(|want| {
                entry
                    .held
                    .iter()
                    .any(|r| r.start <= want.start && want.end <= r.end)
            })
            .then_some(entry.generation)
    }

    /// The bytes of each of `ranges` of the object `key` if the cache holds all of
    /// them; `None` sends the read to the object store (not all held, or the file is
    /// gone or shorter than it should be: the object is then forgotten).
    pub async fn read(self: &Arc<Self>, key: &str, ranges: &[Range<u64>]) -> Option<Vec<Bytes>> {
        let generation = {
            let mut state = self.lock();
            match Self::holding(&state, key, ranges) {
                Some(generation) => {
                    state.clock += 1;
                    let tick = state.clock;
                    let State {
                        entries, by_use, ..
                    } = &mut *state;
                    if let Some(entry) = entries.get_mut(key) {
                        by_use.remove(&entry.used);
                        entry.used = tick;
                        by_use.insert(tick, key.to_owned());
                    }
                    Some(generation)
                }
                None => None,
            }
        };
        let Some(generation) = generation else {
            self.counts.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let path = self.path(key, generation);
        let wanted = ranges.to_vec();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Bytes>> {
            let file = File::open(path)?;
            wanted
                .iter()
                .map(|r| {
                    let len = usize::try_from(r.end - r.start).map_err(std::io::Error::other)?;
                    crate::buffer::read_at(&file, r.start, len)
                })
                .collect()
        })
        .await;
        // Served only if the entry the file was read for is still there: a file is
        // unlinked only after its entry is dropped, and never written again after.
        let current = || Self::holding(&self.lock(), key, ranges) == Some(generation);
        match read {
            Ok(Ok(bytes)) if current() => {
                self.counts.hits.fetch_add(1, Ordering::Relaxed);
                return Some(bytes);
            }
            Ok(Err(e)) if current() => {
                tracing::warn!(key, error = %e, "cannot read a cached object; reading it from the object store");
                self.forget_generation(key, Some(generation));
            }
            _ => {}
        }
        self.counts.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Keeps each of `writes` (bytes at an offset of the object `key`), in the
    /// background: the caller does not wait for the disk. Nothing is kept that would
    /// take the object past an eighth of the cache, or the bytes waiting to be written
    /// past [`MAX_PENDING`] (nor more than that at once, however much is waiting).
    pub fn store(self: &Arc<Self>, key: &str, writes: Vec<(u64, Bytes)>) {
        let len: u64 = writes.iter().map(|(_, b)| b.len() as u64).sum();
        if len == 0 || len > (self.max_bytes / MAX_SHARE).min(MAX_PENDING) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let generation = {
            let mut state = self.lock();
            if state.pending + len > MAX_PENDING {
                drop(state);
                self.counts.skipped.fetch_add(len, Ordering::Relaxed);
                return;
            }
            let State {
                entries,
                clock,
                pending,
                ..
            } = &mut *state;
            let generation = match entries.get_mut(key) {
                Some(entry) => {
                    let all_held = writes.iter().all(|(at, b)| {
                        let end = at + b.len() as u64;
                        entry.held.iter().any(|r| r.start <= *at && end <= r.end)
                    });
                    if all_held || entry.bytes + entry.reserved + len > self.max_bytes / MAX_SHARE {
                        return;
                    }
                    entry.reserved += len;
                    entry.writers += 1;
                    entry.generation
                }
                None => {
                    *clock += 1;
                    entries.insert(
                        key.to_owned(),
                        Entry {
                            generation: *clock,
                            held: Vec::new(),
                            bytes: 0,
                            reserved: len,
                            writers: 1,
                            used: 0,
                        },
                    );
                    *clock
                }
            };
            *pending += len;
            generation
        };
        // Whatever becomes of the task (it may never run if the runtime is shutting
        // down), the job's drop gives back what was reserved for it.
        let job = Job {
            cache: Arc::clone(self),
            key: key.to_owned(),
            generation,
            writes,
            len,
            written: None,
        };
        std::mem::drop(runtime.spawn_blocking(move || {
            let mut job = job;
            job.written = Some(job.cache.write_file(&job.key, job.generation, &job.writes));
        }));
    }

    /// Writes `writes` in the file of `key`'s entry of `generation`, each run of
    /// adjacent pieces in one system call where it fits.
    fn write_file(&self, key: &str, generation: u64, writes: &[(u64, Bytes)]) -> bool {
        let path = self.path(key, generation);
        let written = private_file(&path, false).and_then(|mut file| {
            let mut rest = writes;
            while let Some(&(start, _)) = rest.first() {
                // The pieces that follow each other from `start`.
                let mut end = start;
                let run = rest
                    .iter()
                    .take_while(|(at, b)| {
                        let next = *at == end;
                        end += b.len() as u64;
                        next
                    })
                    .count();
                write_run(&mut file, start, &rest[..run])?;
                rest = &rest[run..];
            }
            Ok(())
        });
        if let Err(e) = &written {
            tracing::warn!(key, error = %e, "cannot keep an object's bytes in the cache");
        }
        written.is_ok()
    }

    /// Counts the bytes of a finished (or abandoned) job as held, or gives back its
    /// reservation, and makes room; the bytes waiting are counted down last, so that
    /// when none wait, every job's effects (files unlinked included) are done.
    fn finish(&self, job: &Job) {
        let (key, generation, len) = (job.key.as_str(), job.generation, job.len);
        let path = self.path(key, generation);
        let mut dropped = Vec::new();
        let mut remove_file = false;
        {
            let mut state = self.lock();
            state.clock += 1;
            let tick = state.clock;
            let State {
                entries,
                by_use,
                bytes,
                ..
            } = &mut *state;
            match entries.get_mut(key).filter(|e| e.generation == generation) {
                // Dropped meanwhile: the file is no one's (it may have been made again
                // by this job after it was unlinked).
                None => remove_file = job.written.is_some(),
                Some(entry) => {
                    entry.writers -= 1;
                    entry.reserved -= len;
                    if job.written == Some(true) {
                        for (at, b) in &job.writes {
                            let range = *at..at + b.len() as u64;
                            entry.held = merge(std::mem::take(&mut entry.held), range);
                        }
                        let before = entry.bytes;
                        entry.bytes = entry.held.iter().map(|r| r.end - r.start).sum();
                        *bytes += entry.bytes - before;
                        if entry.used != 0 {
                            by_use.remove(&entry.used);
                        }
                        entry.used = tick;
                        by_use.insert(tick, key.to_owned());
                        self.counts.stored.fetch_add(len, Ordering::Relaxed);
                    } else if entry.held.is_empty() && entry.writers == 0 {
                        entries.remove(key);
                        remove_file = job.written.is_some();
                    }
                    while *bytes > self.max_bytes {
                        let Some((_, oldest)) = by_use.pop_first() else {
                            break;
                        };
                        if let Some(old) = entries.remove(&oldest) {
                            *bytes -= old.bytes;
                            dropped.push((oldest, old.generation));
                        }
                    }
                }
            }
        }
        if remove_file {
            let _ = std::fs::remove_file(&path);
        }
        self.counts
            .dropped
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        for (key, generation) in dropped {
            let _ = std::fs::remove_file(self.path(&key, generation));
        }
        self.lock().pending -= len;
    }

    /// Drops `key` (deleted from the object store, or its bytes failed a checksum);
    /// whether the cache held any of its bytes.
    pub fn forget(&self, key: &str) -> bool {
        self.forget_generation(key, None)
    }

    /// Drops `key`'s entry if it is of `generation` (any, for `None`).
    fn forget_generation(&self, key: &str, generation: Option<u64>) -> bool {
        let removed = {
            let mut state = self.lock();
            let matches = state
                .entries
                .get(key)
                .is_some_and(|e| generation.is_none_or(|g| e.generation == g));
            let removed = if matches {
                state.entries.remove(key)
            } else {
                None
            };
            if let Some(entry) = &removed {
                if entry.used != 0 {
                    state.by_use.remove(&entry.used);
                }
                state.bytes -= entry.bytes;
            }
            removed
        };
        let Some(entry) = removed else {
            return false;
        };
        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        let path = self.path(key, entry.generation);
        // A reader that opened the file keeps its bytes; a write under way finds its
        // entry gone and removes the file again if it made it anew.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => std::mem::drop(runtime.spawn_blocking(move || {
                let _ = std::fs::remove_file(path);
            })),
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
        entry.bytes > 0
    }
}

/// Bytes handed to [`ObjectCache::store`], written in the background.
struct Job {
    cache: Arc<ObjectCache>,
    key: String,
    generation: u64,
    writes: Vec<(u64, Bytes)>,
    len: u64,
    /// Whether the file was written; `None` if the job never ran.
    written: Option<bool>,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.cache.finish(self);
    }
}

/// Opens `path` for writing, made readable and writable by this user only (the cache
/// holds copies of payloads), truncated or not.
fn private_file(path: &Path, truncate: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(truncate)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Writes `pieces`, which follow each other, at `start` of `file`: with `writev`, as
/// many pieces a call as the system takes (an object store's answer may come in pieces
/// of a few KiB).
fn write_run(file: &mut File, start: u64, pieces: &[(u64, Bytes)]) -> std::io::Result<()> {
    const MAX_SLICES: usize = 1024;
    file.seek(SeekFrom::Start(start))?;
    for group in pieces.chunks(MAX_SLICES) {
        let mut slices: Vec<IoSlice<'_>> = group.iter().map(|(_, b)| IoSlice::new(b)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match file.write_vectored(slices) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// `held` (sorted, apart) with `new` added, merging what overlaps or touches.
fn merge(held: Vec<Range<u64>>, new: Range<u64>) -> Vec<Range<u64>> {
    let mut out = Vec::with_capacity(held.len() + 1);
    let mut new = new;
    let mut placed = false;
    for r in held {
        if r.end < new.start {
            out.push(r);
        } else if new.end < r.start {
            if !placed {
                out.push(new.clone());
                placed = true;
            }
            out.push(r);
        } else {
            new = new.start.min(r.start)..new.end.max(r.end);
        }
    }
    if !placed {
        out.push(new);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of ranges, some of one
    fn merging_keeps_ranges_sorted_and_apart() {
        let m = |held: &[Range<u64>], new: Range<u64>| merge(held.to_vec(), new);
        assert_eq!(m(&[], 5..10), vec![5..10]);
        assert_eq!(m(&[0..5], 5..10), vec![0..10]);
        assert_eq!(m(&[0..4], 5..10), vec![0..4, 5..10]);
        assert_eq!(m(&[20..30], 5..10), vec![5..10, 20..30]);
        assert_eq!(m(&[0..4, 20..30], 5..10), vec![0..4, 5..10, 20..30]);
        assert_eq!(m(&[0..6, 8..12, 20..30], 5..9), vec![0..12, 20..30]);
        assert_eq!(m(&[0..6, 8..12, 20..30], 2..40), vec![0..40]);
        assert_eq!(m(&[10..20], 12..15), vec![10..20]);
    }

    proptest::proptest! {
        #[test]
        fn merged_ranges_hold_exactly_what_was_added(
            adds in proptest::collection::vec((0u64..200, 1u64..40), 1..20),
        ) {
            let mut held = Vec::new();
            let mut bytes = [false; 240];
            for &(start, len) in &adds {
                held = merge(held, start..start + len);
                for b in &mut bytes[start as usize..(start + len) as usize] {
                    *b = true;
                }
            }
            for w in held.windows(2) {
                proptest::prop_assert!(w[0].end < w[1].start, "{:?}", held);
            }
            for (i, &b) in bytes.iter().enumerate() {
                let i = i as u64;
                proptest::prop_assert_eq!(b, held.iter().any(|r| r.contains(&i)));
            }
        }
    }

    /// Waits until every store handed to `cache` is written.
    async fn settled(cache: &ObjectCache) {
        for _ in 0..1000 {
            if cache.stats().pending_bytes == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("stores still pending: {:?}", cache.stats());
    }

    /// Stores `parts` back to back from `offset` and waits for them.
    async fn put(cache: &Arc<ObjectCache>, key: &str, offset: u64, parts: &[&[u8]]) {
        let mut at = offset;
        let writes = parts
            .iter()
            .map(|p| {
                at += p.len() as u64;
                (at - p.len() as u64, Bytes::copy_from_slice(p))
            })
            .collect();
        cache.store(key, writes);
        settled(cache).await;
    }

    async fn read(cache: &Arc<ObjectCache>, key: &str, range: Range<u64>) -> Option<Bytes> {
        cache
            .read(key, std::slice::from_ref(&range))
            .await
            .map(|mut v| v.remove(0))
    }

    #[tokio::test]
    async fn keeps_what_fits_and_drops_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        // Room for 8 objects of 100 bytes; an object may take an eighth (100 bytes).
        let cache = Arc::new(ObjectCache::open(dir.path(), 800).unwrap());
        for n in 0..8u8 {
            put(
                &cache,
                &format!("grains/f/{n}"),
                0,
                &[&[n * 2; 60], &[n * 2 + 1; 40]],
            )
            .await;
        }
        assert_eq!(cache.stats().bytes, 800);
        // Using 0 makes 1 the least recently used.
        let got = read(&cache, "grains/f/0", 50..70).await.unwrap();
        assert_eq!(&got[..10], &[0; 10]);
        assert_eq!(&got[10..], &[1; 10]);
        put(&cache, "grains/f/8", 0, &[&[16; 100]]).await;
        assert!(read(&cache, "grains/f/1", 0..1).await.is_none());
        assert!(read(&cache, "grains/f/0", 0..1).await.is_some());
        assert!(read(&cache, "grains/f/2", 0..1).await.is_some());
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes, stats.dropped), (8, 800, 1));
        assert_eq!((stats.hits, stats.misses), (3, 1));
        assert_eq!(stats.stored_bytes, 900);
        // The dropped object's file is gone; 8 files and the lock remain.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 9);
        // More than an eighth of the cache: not kept, nothing dropped for it.
        put(&cache, "big", 0, &[&[0; 101]]).await;
        assert!(read(&cache, "big", 0..1).await.is_none());
        assert_eq!(cache.stats().objects, 8);
    }

    #[tokio::test]
    async fn an_object_takes_at_most_an_eighth_even_from_stores_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), 800).unwrap());
        // Ten stores of 30 bytes handed over before any is written: three fit in 100.
        for i in 0..10u64 {
            cache.store("k", vec![(i * 30, Bytes::from(vec![i as u8; 30]))]);
        }
        settled(&cache).await;
        let stats = cache.stats();
        assert_eq!(
            (stats.objects, stats.bytes, stats.stored_bytes),
            (1, 90, 90)
        );
        assert_eq!(read(&cache, "k", 0..90).await.unwrap()[89], 2);
        assert!(read(&cache, "k", 0..91).await.is_none());
    }

    #[tokio::test]
    async fn serves_only_bytes_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), 1 << 20).unwrap());
        // Two parts of an object read at different times, with a gap between them.
        put(&cache, "k", 100, &[b"abcdef"]).await;
        put(&cache, "k", 110, &[b"uvw", b"xyz"]).await;
        assert_eq!(
            read(&cache, "k", 101..104).await.unwrap(),
            Bytes::from_static(b"bcd")
        );
        assert_eq!(
            read(&cache, "k", 110..116).await.unwrap(),
            Bytes::from_static(b"uvwxyz")
        );
        // Ranges on both sides of the gap, in one read.
        let both = cache.read("k", &[100..106, 110..116]).await.unwrap();
        assert_eq!(both, [&b"abcdef"[..], &b"uvwxyz"[..]]);
        // Across the gap, or before the first byte held: not held.
        assert!(read(&cache, "k", 104..112).await.is_none());
        assert!(cache.read("k", &[100..106, 0..2]).await.is_none());
        // Filling the gap joins them.
        put(&cache, "k", 106, &[b"0123"]).await;
        assert_eq!(
            read(&cache, "k", 100..116).await.unwrap(),
            Bytes::from_static(b"abcdef0123uvwxyz")
        );
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (1, 16));
        assert_eq!((stats.hits, stats.misses), (4, 2));
        // Forgotten: its file goes, and its bytes are not served again.
        assert!(cache.forget("k"));
        assert!(!cache.forget("k"));
        assert!(read(&cache, "k", 100..101).await.is_none());
        assert_eq!(cache.stats().bytes, 0);
        for _ in 0..100 {
            if std::fs::read_dir(dir.path()).unwrap().count() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the lock"
        );
    }

    #[tokio::test]
    async fn a_missing_or_short_file_sends_the_read_elsewhere_and_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), 1 << 20).unwrap());
        put(&cache, "grains/a/1", 0, &[b"hello world"]).await;
        assert_eq!(
            read(&cache, "grains/a/1", 6..11).await.unwrap(),
            Bytes::from_static(b"world")
        );
        // The file shortened behind the cache's back.
        let generation = cache.lock().entries["grains/a/1"].generation;
        let file = OpenOptions::new()
            .write(true)
            .open(cache.path("grains/a/1", generation))
            .unwrap();
        file.set_len(8).unwrap();
        assert!(read(&cache, "grains/a/1", 6..11).await.is_none());
        assert_eq!(cache.stats().objects, 0);
        put(&cache, "grains/a/2", 0, &[b"abc"]).await;
        let generation = cache.lock().entries["grains/a/2"].generation;
        std::fs::remove_file(cache.path("grains/a/2", generation)).unwrap();
        assert!(read(&cache, "grains/a/2", 0..3).await.is_none());
        assert_eq!(cache.stats().objects, 0);
        // Kept again, under a new file.
        put(&cache, "grains/a/2", 0, &[b"abc"]).await;
        assert_ne!(cache.lock().entries["grains/a/2"].generation, generation);
        assert_eq!(
            read(&cache, "grains/a/2", 1..2).await.unwrap(),
            Bytes::from_static(b"b")
        );
    }

    #[tokio::test]
    async fn bytes_past_the_backlog_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), 8 * MAX_PENDING).unwrap());
        cache.lock().pending = MAX_PENDING - 10;
        cache.store("k", vec![(0, Bytes::from(vec![1; 11]))]);
        assert_eq!(cache.stats().skipped_bytes, 11);
        cache.store("k", vec![(0, Bytes::from(vec![1; 10]))]);
        cache.lock().pending -= MAX_PENDING - 10;
        settled(&cache).await;
        assert_eq!(read(&cache, "k", 0..10).await.unwrap(), vec![1; 10]);
    }

    #[tokio::test]
    async fn many_small_pieces_are_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), 64 << 20).unwrap());
        // 3,000 pieces of 7 bytes (more than one writev takes), then two runs apart.
        let pieces: Vec<Vec<u8>> = (0..3000u32).map(|i| vec![(i % 251) as u8; 7]).collect();
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        put(&cache, "k", 5, &refs).await;
        cache.store(
            "k",
            vec![
                (30_000, Bytes::from_static(b"ab")),
                (30_002, Bytes::from_static(b"cd")),
                (40_000, Bytes::from_static(b"xyz")),
            ],
        );
        settled(&cache).await;
        let whole = read(&cache, "k", 5..21_005).await.unwrap();
        assert_eq!(whole, pieces.concat());
        let runs = cache
            .read("k", &[30_000..30_004, 40_000..40_003])
            .await
            .unwrap();
        assert_eq!(runs, [&b"abcd"[..], &b"xyz"[..]]);
        assert_eq!(cache.stats().bytes, 21_000 + 4 + 3);
    }

    #[test]
    fn keeps_nothing_outside_a_runtime_or_larger_than_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), u64::MAX / 2).unwrap());
        cache.store("k", vec![(0, Bytes::from_static(b"abc"))]);
        assert_eq!(cache.stats(), CacheStats::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let big = Bytes::from(vec![0; MAX_PENDING as usize + 1]);
            cache.store("k", vec![(0, big)]);
            // Not kept, and not counted as skipped for a lagging disk either.
            assert_eq!(cache.stats(), CacheStats::default());
        });
    }

    #[test]
    fn starts_empty_alone_and_names_files_apart_inside_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("left-over.3"), b"x").unwrap();
        let cache = ObjectCache::open(dir.path(), 1 << 20).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [LOCK_FILE]);
        // A second cache on the directory (another process's, or this one's) is refused.
        let err = ObjectCache::open(dir.path(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("data_dir of its own"), "{err}");
        drop(cache);
        let cache = ObjectCache::open(dir.path(), 1 << 20).unwrap();
        let names: HashSet<PathBuf> = ["a/b", "a_b", "a-2f-b", "../x", "a-b", "ab", "a.1"]
            .iter()
            .map(|k| cache.path(k, 1))
            .collect();
        assert_eq!(names.len(), 7);
        for name in names {
            assert_eq!(name.parent(), Some(dir.path()));
        }
        assert_ne!(cache.path("a", 1), cache.path("a", 2));
        // Its directory and files are this user's only.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = dir.path().join("fresh");
        drop(ObjectCache::open(&fresh, 1 << 20).unwrap());
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join(LOCK_FILE)), 0o600);
    }
}
