//! Append-only segment files holding the payloads too large to keep in the index.
//!
//! A segment is a plain file named by its id; payloads are appended back to back. The
//! index records, in the same transaction as the grains that point into it, each
//! segment's committed length and how many of its bytes are still referenced (live). At
//! open, bytes past the committed length (a crash between the append and the index
//! commit) are cut off and files the index does not know are removed, so a segment never
//! holds uncommitted data that a later append could mistake for its own.
//!
//! A segment whose live bytes fall to zero is unlinked once no read snapshot that could
//! still point into it is open (see [`Reclaimer`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// The directory of segment files and a cache of open handles for reading.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    /// Open read handles by segment id. A std mutex: held only for a map look-up.
    readers: Mutex<HashMap<u64, Arc<File>>>,
    /// Buffers that payload reads fill, reused once their `Bytes` are dropped.
    buffers: Arc<BufferPool>,
}

/// Read buffers kept for reuse, up to [`BufferPool::MAX_BYTES`] in all.
///
/// A large payload read into a freshly allocated buffer costs more than the copy: the
/// allocator hands out new pages (page faults, the kernel zeroing them) and gives them
/// back when the buffer is freed (`madvise`), for every grain. Profiles of 1 MiB grain
/// reads put that at a third of the server's time. A bounded pool of buffers, returned
/// when the last `Bytes` of a payload is dropped, reads into pages already mapped.
#[derive(Debug, Default)]
struct BufferPool {
    /// A std mutex: held for a push or a short scan, never across I/O.
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// The most bytes of buffers kept; the pool keeps no buffer larger than a quarter.
    const MAX_BYTES: usize = 16 << 20;

    /// An empty buffer with room for `len` bytes: a kept one if one is big enough.
    fn take(&self, len: usize) -> Vec<u8> {
        if len <= Self::MAX_BYTES / 4 {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = free.iter().position(|b| b.capacity() >= len) {
                let mut buf = free.swap_remove(i);
                buf.clear();
                return buf;
            }
        }
        Vec::with_capacity(len)
    }

    /// Keeps `buf` for reuse if it is not too large and the pool has room.
    fn give_back(&self, buf: Vec<u8>) {
        if buf.capacity() > Self::MAX_BYTES / 4 {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= Self::MAX_BYTES {
            free.push(buf);
        }
    }
}

/// A payload read into a pooled buffer; the buffer goes back to the pool when dropped.
struct PooledPayload {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for PooledPayload {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledPayload {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

impl Segments {
    /// Uses `dir` (created if absent).
    pub fn open(dir: &Path) -> std::io::Result<Segments> {
        std::fs::create_dir_all(dir)?;
        Ok(Segments {
            dir: dir.to_owned(),
            readers: Mutex::new(HashMap::new()),
            buffers: Arc::default(),
        })
    }

    /// The path of a segment's file.
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.seg"))
    }

    /// The ids of the segment files present on disk.
    pub fn list(&self) -> std::io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(".seg") {
                if let Ok(id) = u64::from_str_radix(hex, 16) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads `len` bytes at `offset` of segment `id` (blocking).
    pub fn read(&self, id: u64, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let file = self.reader(id)?;
        let mut buf = self.buffers.take(len);
        if let Err(e) = read_exact_at(&file, len, offset, &mut buf) {
            self.buffers.give_back(buf);
            return Err(e);
        }
        Ok(Bytes::from_owner(PooledPayload {
            buf,
            pool: self.buffers.clone(),
        }))
    }

    fn reader(&self, id: u64) -> std::io::Result<Arc<File>> {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = readers.get(&id) {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(self.path(id))?);
        readers.insert(id, file.clone());
        Ok(file)
    }

    /// Removes a segment's file and forgets its read handle.
    pub fn remove(&self, id: u64) -> std::io::Result<()> {
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Cuts a segment back to its committed length.
    pub fn truncate(&self, id: u64, len: u64) -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.path(id))?;
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        Ok(())
    }

    /// Opens segment `id` for appending at `len`, creating it (durably) if new.
    pub fn appender(&self, id: u64, len: u64) -> std::io::Result<Appender> {
        let path = self.path(id);
        let created = !path.exists();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        if created {
            // The file's name must survive a crash before the index points into it.
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(Appender {
            id,
            file,
            len,
            synced: len,
        })
    }
}

/// Reads exactly `len` bytes at `offset` into a fresh buffer without zeroing it first:
/// for 1 MiB payloads, clearing the buffer that `pread` then overwrites costs as much as
/// the copy from the page cache itself.
/// Reads `len` bytes at `offset` into `buf` (empty, with room for them).
fn read_exact_at(file: &File, len: usize, offset: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    debug_assert!(buf.is_empty() && buf.capacity() >= len);
    while buf.len() < len {
        let done = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - done];
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| std::io::Error::other("segment offset out of range"))?;
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`; pread
        // writes at most that many bytes into it and reports how many it wrote.
        let n =
            unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        match n {
            n if n > 0 => {
                // SAFETY: pread initialised the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(done + n as usize) };
            }
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment ends before the payload",
                ));
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// The segment being appended to, owned by the committer.
#[derive(Debug)]
pub struct Appender {
    id: u64,
    file: File,
    len: u64,
    synced: u64,
}

impl Appender {
    /// The segment's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes written so far (committed or not).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `payload`, returning its offset.
    pub fn append(&mut self, payload: &[u8]) -> std::io::Result<u64> {
        let offset = self.len;
        self.file.write_all_at(payload, offset)?;
        self.len += payload.len() as u64;
        Ok(offset)
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.synced != self.len {
            self.file.sync_data()?;
            self.synced = self.len;
        }
        Ok(())
    }

    /// Forgets appends after `len` (their commit failed).
    pub fn rewind(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        self.synced = self.synced.min(len);
        Ok(())
    }

    /// Flushes buffered writes (none are buffered; kept for clarity at rotation).
    pub fn finish(mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.sync()
    }
}

/// Delays unlinking dead segments until no read snapshot that could point into them is
/// open.
///
/// Every read snapshot holds a clone of the current epoch token. When a commit makes a
/// segment dead, the committer swaps in a new token and parks the segment with the old
/// one; once only the parking holds the old token, every snapshot that might have seen
/// the segment is gone and the file can go.
#[derive(Debug, Default)]
pub struct Reclaimer {
    /// A std mutex: held only to clone or swap an `Arc`.
    current: Mutex<Arc<()>>,
    pending: Mutex<Vec<(Arc<()>, u64)>>,
}

impl Reclaimer {
    /// The token a new snapshot must hold (taken before the snapshot begins).
    pub fn enter(&self) -> Arc<()> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Parks segments made dead by a commit that has completed.
    pub fn retire(&self, segments: impl IntoIterator<Item = u64>) {
        let mut segments = segments.into_iter().peekable();
        if segments.peek().is_none() {
            return;
        }
        let old = std::mem::take(&mut *self.current.lock().unwrap_or_else(|e| e.into_inner()));
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(segments.map(|id| (old.clone(), id)));
    }

    /// Segments no snapshot can reach any more; they are forgotten here.
    pub fn reclaimable(&self) -> Vec<u64> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut free = Vec::new();
        // Count how many parked entries share each token; a token is free when all its
        // references are parked ones.
        let mut counts: HashMap<*const (), usize> = HashMap::new();
        for (token, _) in pending.iter() {
            *counts.entry(Arc::as_ptr(token)).or_default() += 1;
        }
        let unreachable: Vec<*const ()> = counts
            .iter()
            .filter(|(ptr, parked)| {
                pending
                    .iter()
                    .find(|(t, _)| Arc::as_ptr(t) == **ptr)
                    .is_some_and(|(t, _)| Arc::strong_count(t) == **parked)
            })
            .map(|(ptr, _)| *ptr)
            .collect();
        pending.retain(|(token, id)| {
            if unreachable.contains(&Arc::as_ptr(token)) {
                free.push(*id);
                false
            } else {
                true
            }
        });
        free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_buffers_are_reused_once_dropped_and_bounded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let segments = Segments::open(dir.path()).expect("open");
        let mut appender = segments.appender(1, 0).expect("appender");
        let first: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let second: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let at_first = appender.append(&first).expect("append");
        let at_second = appender.append(&second).expect("append");
        let huge = vec![9u8; BufferPool::MAX_BYTES / 4 + 1];
        let at_huge = appender.append(&huge).expect("append");
        appender.sync().expect("sync");

        let a = segments.read(1, at_first, first.len()).expect("read");
        assert_eq!(&a[..], &first[..]);
        let a_ptr = a.as_ptr();
        drop(a);
        // The second read fills the buffer the first gave back, with its own bytes.
        let b = segments.read(1, at_second, second.len()).expect("read");
        assert_eq!(b.as_ptr(), a_ptr);
        assert_eq!(&b[..], &second[..]);
        // While `b` lives, its buffer is not handed out again.
        let c = segments.read(1, at_first, first.len()).expect("read");
        assert_ne!(c.as_ptr(), b.as_ptr());
        assert_eq!(&c[..], &first[..]);
        // A slice keeps the buffer out of the pool too.
        let tail = b.slice(10..20);
        drop(b);
        let d = segments.read(1, at_first, first.len()).expect("read");
        assert_ne!(d.as_ptr(), a_ptr);
        assert_eq!(&tail[..], &second[10..20]);
        // A buffer larger than the pool keeps is not kept.
        let h = segments.read(1, at_huge, huge.len()).expect("read");
        assert_eq!(&h[..], &huge[..]);
        drop(h);
        let kept = segments.buffers.free.lock().expect("pool");
        assert!(
            kept.iter()
                .all(|b| b.capacity() <= BufferPool::MAX_BYTES / 4)
        );
    }
}
