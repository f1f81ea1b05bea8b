//! Payload buffers reused across grains.
//!
//! A large payload copied into a freshly allocated buffer costs more than the copy: the
//! allocator hands out new pages (page faults, the kernel zeroing them) and gives them
//! back when the buffer is freed (`madvise`), for every grain. Profiles of 1 MiB grain
//! reads put that at a third of the server's time. Buffers taken here are returned when
//! the last [`Bytes`] made from them is dropped, and the next payload is copied into
//! pages already mapped. The pool is bounded: at most [`MAX_KEPT`] bytes of buffers, none
//! larger than [`MAX_BUFFER`], so it never holds much memory however many grains pass.

use std::os::fd::AsRawFd;
use std::sync::Mutex;

use bytes::Bytes;

/// The most bytes of free buffers kept.
pub const MAX_KEPT: usize = 16 << 20;
/// The largest buffer kept; larger payloads get buffers of their own.
pub const MAX_BUFFER: usize = MAX_KEPT / 4;
/// The smallest buffer kept: small allocations come from the allocator's caches
/// without page faults, and a small payload must not hold a large buffer.
pub const MIN_BUFFER: usize = 64 << 10;

/// The pool payload reads and GSF decoding take their buffers from.
pub static POOL: BufferPool = BufferPool::new();

/// Free buffers, bounded by [`MAX_KEPT`] and [`MIN_BUFFER`]..=[`MAX_BUFFER`].
pub struct BufferPool {
    /// A std mutex: held for a push or a short scan, never across I/O.
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// An empty pool.
    pub const fn new() -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer with room for `len` bytes: a kept one if one fits (big enough,
    /// and not more than twice as big).
    pub fn take(&self, len: usize) -> Vec<u8> {
        if (MIN_BUFFER..=MAX_BUFFER).contains(&len) {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = free
                .iter()
                .position(|b| (len..=len * 2).contains(&b.capacity()))
            {
                let mut buf = free.swap_remove(i);
                buf.clear();
                return buf;
            }
        }
        Vec::with_capacity(len)
    }

    /// Keeps `buf` for reuse if its size is one the pool keeps and the pool has room.
    pub fn give_back(&self, buf: Vec<u8>) {
        if !(MIN_BUFFER..=MAX_BUFFER).contains(&buf.capacity()) {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= MAX_KEPT {
            free.push(buf);
        }
    }

    /// `buf` as `Bytes`; the buffer returns to the pool when the last of them is
    /// dropped.
    pub fn freeze(&'static self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled { buf, pool: self })
    }
}

/// A buffer on loan from a pool.
struct Pooled {
    buf: Vec<u8>,
    pool: &'static BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

/// Reads `len` bytes at `offset` of `file` (blocking) into a buffer of [`POOL`].
pub fn read_at(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = POOL.take(len);
    if let Err(e) = read_exact_at(file, len, offset, &mut buf) {
        POOL.give_back(buf);
        return Err(e);
    }
    Ok(POOL.freeze(buf))
}

/// Reads exactly `len` bytes at `offset` into `buf` (empty, with room for them) without
/// zeroing it first: for 1 MiB payloads, clearing the buffer that `pread` then
/// overwrites costs as much as the copy from the page cache itself.
fn read_exact_at(
    file: &std::fs::File,
    len: usize,
    offset: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    debug_assert!(buf.is_empty() && buf.capacity() >= len);
    while buf.len() < len {
        let done = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - done];
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| std::io::Error::other("file offset out of range"))?;
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
                    "the file ends before the bytes wanted",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &'static BufferPool, len: usize, seed: u8) -> Bytes {
        let mut buf = pool.take(len);
        buf.extend((0..len).map(|i| (i as u8).wrapping_mul(seed)));
        pool.freeze(buf)
    }

    #[test]
    fn buffers_are_reused_once_dropped_and_not_before() {
        static POOL: BufferPool = BufferPool::new();
        let a = filled(&POOL, 100_000, 3);
        let a_ptr = a.as_ptr();
        drop(a);
        let b = filled(&POOL, 100_000, 7);
        assert_eq!(b.as_ptr(), a_ptr, "the dropped buffer is reused");
        assert!(
            b.iter()
                .enumerate()
                .all(|(i, &x)| x == (i as u8).wrapping_mul(7))
        );
        // While `b`, or a slice of it, lives, its buffer is not handed out again.
        let tail = b.slice(10..20);
        drop(b);
        let c = filled(&POOL, 100_000, 5);
        assert_ne!(c.as_ptr(), a_ptr);
        assert_eq!(
            &tail[..],
            &(10..20u8).map(|i| i.wrapping_mul(7)).collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn the_pool_stays_bounded() {
        static POOL: BufferPool = BufferPool::new();
        drop(filled(&POOL, MAX_BUFFER + 1, 1));
        drop(filled(&POOL, MIN_BUFFER - 1, 1));
        let many: Vec<Bytes> = (0..40).map(|_| filled(&POOL, 1 << 20, 1)).collect();
        drop(many);
        let free = POOL.free.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            free.iter()
                .all(|b| (MIN_BUFFER..=MAX_BUFFER).contains(&b.capacity()))
        );
        assert!(free.iter().map(Vec::capacity).sum::<usize>() <= MAX_KEPT);
    }
}
