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
use std::os::fd::AsRawFd;
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
}

impl Segments {
    /// Uses `dir` (created if absent).
    pub fn open(dir: &Path) -> std::io::Result<Segments> {
        std::fs::create_dir_all(dir)?;
        Ok(Segments {
            dir: dir.to_owned(),
            readers: Mutex::new(HashMap::new()),
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
            if let Some(hex) = name.strip_suffix(".seg")
                && let Ok(id) = u64::from_str_radix(hex, 16)
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads `len` bytes at `offset` of segment `id` (blocking).
    pub fn read(&self, id: u64, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let file = self.reader(id)?;
        crate::buffer::read_at(&file, offset, len)
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
            written_back: len,
        })
    }
}

/// The segment being appended to, owned by the committer.
#[derive(Debug)]
pub struct Appender {
    id: u64,
    file: File,
    len: u64,
    synced: u64,
    /// Where the writeback started by `append` has reached.
    written_back: u64,
}

/// How many appended bytes `append` lets gather before it starts their writeback.
const WRITEBACK_BYTES: u64 = 1 << 20;

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
        if self.len - self.written_back >= WRITEBACK_BYTES {
            self.start_writeback();
        }
        Ok(offset)
    }

    /// Starts writing the appended bytes not yet on their way to the disk, without
    /// waiting: the commit's `fdatasync` then finds most of a large batch already
    /// written instead of starting all of it at once. Advisory: a failure here shows up
    /// at that `fdatasync`.
    fn start_writeback(&mut self) {
        let (from, len) = (self.written_back, self.len - self.written_back);
        // SAFETY: a valid open descriptor; the call only reads its arguments.
        let _ = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        self.written_back = self.len;
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
        self.written_back = self.written_back.min(len);
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
