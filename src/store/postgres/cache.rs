//! A replica's cache of payload objects on its own disk.
//!
//! Objects are never rewritten (a key is used once), so a copy never goes stale. The
//! bytes of an object that a replica uploads, or reads from the object store, are kept
//! at their offsets in a file of the cache directory (a sparse file when only parts
//! were read), and a later read of bytes the file holds is served from it instead of
//! the object store: nothing is fetched twice to fill the cache. The cache holds at
//! most its configured bytes; past them the least recently used objects are dropped.
//!
//! It is emptied at start (a copy left by a crash may be incomplete), and nothing else
//! depends on it: a file missing or shorter than expected sends the read to the object
//! store, and so does a payload that fails its grain's checksum (the caller then
//! [forgets](ObjectCache::forget) the object).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

/// The part of the cache's bytes one object may take at most.
const MAX_SHARE: u64 = 8;

/// Payload objects' bytes kept on local disk, the least recently used dropped first.
#[derive(Debug)]
pub struct ObjectCache {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    counts: Counts,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Last use to key: the order in which to drop.
    by_use: BTreeMap<u64, String>,
    /// Bytes held, over all entries.
    bytes: u64,
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
    used: u64,
}

#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
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
                "grainstore_object_cache_dropped_total",
                "Objects dropped from the object cache: for room, deleted, or failing a checksum.",
                true,
                self.dropped,
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
    /// A cache of at most `max_bytes` in `dir`, which is created, and emptied of the
    /// files an earlier run left.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<ObjectCache> {
        std::fs::create_dir_all(dir)?;
        let mut removed = 0u64;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
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
        })
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let state = self.lock();
        CacheStats {
            hits: self.counts.hits.load(Ordering::Relaxed),
            misses: self.counts.misses.load(Ordering::Relaxed),
            stored_bytes: self.counts.stored.load(Ordering::Relaxed),
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

    /// The bytes `span` of the object `key` if the cache holds all of them; `None`
    /// sends the read to the object store (not held, or the file is gone or shorter
    /// than it should be: the object is then forgotten).
    pub async fn read(self: &Arc<Self>, key: &str, span: Range<u64>) -> Option<Bytes> {
        let generation = {
            let mut state = self.lock();
            let State {
                entries,
                by_use,
                clock,
                ..
            } = &mut *state;
            match entries.get_mut(key) {
                Some(entry)
                    if entry
                        .held
                        .iter()
                        .any(|r| r.start <= span.start && span.end <= r.end) =>
                {
                    by_use.remove(&entry.used);
                    *clock += 1;
                    entry.used = *clock;
                    by_use.insert(*clock, key.to_owned());
                    Some(entry.generation)
                }
                _ => None,
            }
        };
        let Some(generation) = generation else {
            self.counts.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.counts.hits.fetch_add(1, Ordering::Relaxed);
        let path = self.path(key, generation);
        let len = usize::try_from(span.end - span.start).ok()?;
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
            let file = File::open(path)?;
            let mut buf = BytesMut::zeroed(len);
            file.read_exact_at(&mut buf, span.start)?;
            Ok(buf.freeze())
        })
        .await;
        match read {
            Ok(Ok(bytes)) => Some(bytes),
            Ok(Err(e)) => {
                tracing::warn!(key, error = %e, "cannot read a cached object; reading it from the object store");
                self.forget(key);
                None
            }
            Err(_) => None,
        }
    }

    /// Keeps `parts`, back to back from byte `offset` of the object `key`, in the
    /// background (the caller does not wait for the disk). Bytes that would take the
    /// object past an eighth of the cache are not kept.
    pub fn store(self: &Arc<Self>, key: &str, offset: u64, parts: Vec<Bytes>) {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if len == 0 || len > self.max_bytes / MAX_SHARE {
            return;
        }
        let cache = Arc::clone(self);
        let key = key.to_owned();
        std::mem::drop(tokio::task::spawn_blocking(move || {
            cache.write(&key, offset, &parts, len)
        }));
    }

    /// Writes `parts` at `offset` in `key`'s file, then counts them as held and makes
    /// room for them.
    fn write(&self, key: &str, offset: u64, parts: &[Bytes], len: u64) {
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        if len > self.max_bytes / MAX_SHARE {
            return;
        }
        let generation = {
            let mut state = self.lock();
            let State { entries, clock, .. } = &mut *state;
            match entries.get(key) {
                Some(entry) if entry.bytes + len > self.max_bytes / MAX_SHARE => return,
                Some(entry) if entry.held.iter().any(|r| r.start <= offset && end <= r.end) => {
                    return;
                }
                Some(entry) => entry.generation,
                None => {
                    *clock += 1;
                    let generation = *clock;
                    entries.insert(
                        key.to_owned(),
                        Entry {
                            generation,
                            held: Vec::new(),
                            bytes: 0,
                            used: 0,
                        },
                    );
                    generation
                }
            }
        };
        let path = self.path(key, generation);
        let written = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|file| {
                let mut at = offset;
                for part in parts {
                    file.write_all_at(part, at)?;
                    at += part.len() as u64;
                }
                Ok(())
            });
        let mut dropped = Vec::new();
        {
            let mut state = self.lock();
            let State {
                entries,
                by_use,
                bytes,
                clock,
            } = &mut *state;
            let Some(entry) = entries.get_mut(key).filter(|e| e.generation == generation) else {
                // Dropped meanwhile: whatever was written is no one's.
                drop(state);
                let _ = std::fs::remove_file(&path);
                return;
            };
            if let Err(e) = written {
                tracing::warn!(key, error = %e, "cannot keep an object's bytes in the cache");
                if entry.held.is_empty() {
                    entries.remove(key);
                    drop(state);
                    let _ = std::fs::remove_file(&path);
                }
                return;
            }
            let before = entry.bytes;
            entry.held = merge(std::mem::take(&mut entry.held), offset..end);
            entry.bytes = entry.held.iter().map(|r| r.end - r.start).sum();
            *bytes += entry.bytes - before;
            if entry.used != 0 {
                by_use.remove(&entry.used);
            }
            *clock += 1;
            entry.used = *clock;
            by_use.insert(*clock, key.to_owned());
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
        self.counts.stored.fetch_add(len, Ordering::Relaxed);
        self.counts
            .dropped
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        for (key, generation) in dropped {
            let _ = std::fs::remove_file(self.path(&key, generation));
        }
    }

    /// Drops `key` (deleted from the object store, or its bytes failed a checksum).
    pub fn forget(&self, key: &str) {
        let removed = {
            let mut state = self.lock();
            let removed = state.entries.remove(key);
            if let Some(entry) = &removed {
                if entry.used != 0 {
                    state.by_use.remove(&entry.used);
                }
                state.bytes -= entry.bytes;
            }
            removed
        };
        if let Some(entry) = removed {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            let path = self.path(key, entry.generation);
            // A reader that opened the file keeps its bytes.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => std::mem::drop(runtime.spawn_blocking(move || {
                    let _ = std::fs::remove_file(path);
                })),
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
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

    fn object(n: u8) -> Vec<Bytes> {
        vec![Bytes::from(vec![n; 60]), Bytes::from(vec![n + 1; 40])]
    }

    #[tokio::test]
    async fn keeps_what_fits_and_drops_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        // Room for 8 objects of 100 bytes; an object may take an eighth (100 bytes).
        let cache = Arc::new(ObjectCache::open(dir.path(), 800).unwrap());
        for n in 0..8u8 {
            cache.write(&format!("grains/f/{n}"), 0, &object(n * 2), 100);
        }
        assert_eq!(cache.stats().bytes, 800);
        // Using 0 makes 1 the least recently used.
        let got = cache.read("grains/f/0", 50..70).await.unwrap();
        assert_eq!(&got[..10], &[0; 10]);
        assert_eq!(&got[10..], &[1; 10]);
        cache.write("grains/f/8", 0, &object(16), 100);
        assert!(cache.read("grains/f/1", 0..1).await.is_none());
        assert!(cache.read("grains/f/0", 0..1).await.is_some());
        assert!(cache.read("grains/f/2", 0..1).await.is_some());
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes, stats.dropped), (8, 800, 1));
        assert_eq!((stats.hits, stats.misses), (3, 1));
        assert_eq!(stats.stored_bytes, 900);
        // The dropped object's file is gone; 8 files remain.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 8);
        // More than an eighth of the cache: not kept, nothing dropped for it.
        cache.write("big", 0, &[Bytes::from(vec![0; 101])], 101);
        assert!(cache.read("big", 0..1).await.is_none());
        assert_eq!(cache.stats().objects, 8);
    }

    #[tokio::test]
    async fn serves_only_bytes_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), 1 << 20).unwrap());
        // Two parts of an object read at different times, with a gap between them.
        cache.write("k", 100, &[Bytes::from_static(b"abcdef")], 6);
        cache.write(
            "k",
            110,
            &[Bytes::from_static(b"uvw"), Bytes::from_static(b"xyz")],
            6,
        );
        assert_eq!(
            cache.read("k", 101..104).await.unwrap(),
            Bytes::from_static(b"bcd")
        );
        assert_eq!(
            cache.read("k", 110..116).await.unwrap(),
            Bytes::from_static(b"uvwxyz")
        );
        // Across the gap, or before the first byte held: not held.
        assert!(cache.read("k", 104..112).await.is_none());
        assert!(cache.read("k", 0..2).await.is_none());
        // Filling the gap joins them.
        cache.write("k", 106, &[Bytes::from_static(b"0123")], 4);
        assert_eq!(
            cache.read("k", 100..116).await.unwrap(),
            Bytes::from_static(b"abcdef0123uvwxyz")
        );
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (1, 16));
        assert_eq!((stats.hits, stats.misses), (3, 2));
        // Forgotten: its file goes, and its bytes are not served again.
        cache.forget("k");
        assert!(cache.read("k", 100..101).await.is_none());
        assert_eq!(cache.stats().bytes, 0);
        for _ in 0..100 {
            if std::fs::read_dir(dir.path()).unwrap().count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_missing_or_short_file_sends_the_read_elsewhere_and_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), 1 << 20).unwrap());
        cache.write("grains/a/1", 0, &[Bytes::from_static(b"hello world")], 11);
        assert_eq!(
            cache.read("grains/a/1", 6..11).await.unwrap(),
            Bytes::from_static(b"world")
        );
        // The file shortened behind the cache's back.
        let generation = cache.lock().entries["grains/a/1"].generation;
        let file = OpenOptions::new()
            .write(true)
            .open(cache.path("grains/a/1", generation))
            .unwrap();
        file.set_len(8).unwrap();
        assert!(cache.read("grains/a/1", 6..11).await.is_none());
        assert_eq!(cache.stats().objects, 0);
        cache.write("grains/a/2", 0, &[Bytes::from_static(b"abc")], 3);
        let generation = cache.lock().entries["grains/a/2"].generation;
        std::fs::remove_file(cache.path("grains/a/2", generation)).unwrap();
        assert!(cache.read("grains/a/2", 0..3).await.is_none());
        assert_eq!(cache.stats().objects, 0);
    }

    #[tokio::test]
    async fn stores_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path(), 1 << 20).unwrap());
        cache.store("k", 0, vec![Bytes::from_static(b"12345")]);
        let mut got = None;
        for _ in 0..200 {
            got = cache.read("k", 1..3).await;
            if got.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(got, Some(Bytes::from_static(b"23")));
    }

    #[test]
    fn starts_empty_and_names_files_apart_inside_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("left-over.3"), b"x").unwrap();
        let cache = ObjectCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let names: HashSet<PathBuf> = ["a/b", "a_b", "a-2f-b", "../x", "a-b", "ab", "a.1"]
            .iter()
            .map(|k| cache.path(k, 1))
            .collect();
        assert_eq!(names.len(), 7);
        for name in names {
            assert_eq!(name.parent(), Some(dir.path()));
        }
        assert_ne!(cache.path("a", 1), cache.path("a", 2));
    }
}
