//! Recently committed small grains, kept in memory so that a single-grain read near the
//! live edge (where a pipeline's reads concentrate: the grains just announced to live
//! subscribers) is answered without an engine call and without a trip to the blocking
//! pool.
//!
//! Of each committed batch it takes the last [`PER_BATCH`] grains with payloads kept in
//! the index: a live writer's batches whole, a bulk upload's ends.
//!
//! Only the committer changes it. Each entry carries the sequence number of the commit
//! that stored it; a read session may take an entry only when its snapshot was begun
//! after that commit ([`Recent::sequence`] is read before the snapshot is begun and
//! advanced only once a commit is visible), so a session never sees a grain its
//! snapshot does not hold. The grains are added after the commit's writers have been
//! answered, off their latency; until then a session reads them from the index. Deletes remove their grains here before their commit, so
//! no session begun after a delete finds a deleted grain. Payloads are copied in, never
//! shared with the upload's buffers, and the bytes kept are bounded; the oldest commits'
//! grains go first.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use crate::grain::Grain;
use crate::time::TimeRange;

/// Of each committed batch, at most its last this many grains are added.
pub const PER_BATCH: usize = 256;

/// A grain's key: (flow id, origin timestamp in nanoseconds).
type Key = (u128, i128);

/// What an entry costs beside its payload (key, header, bookkeeping), for the bound.
const ENTRY_OVERHEAD: usize = 256;

/// See the module docs.
pub struct Recent {
    capacity: usize,
    /// The sequence number of the newest visible commit.
    sequence: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    grains: FxHashMap<Key, (u64, Grain)>,
    /// Keys in the order they were added (a key may be here after its entry is gone).
    order: VecDeque<Key>,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &Key) {
        if let Some((_, grain)) = self.grains.remove(key) {
            self.bytes -= cost(&grain);
        }
    }
}

fn cost(grain: &Grain) -> usize {
    grain.payload().len() + ENTRY_OVERHEAD
}

impl Recent {
    /// A cache keeping up to `capacity` bytes; 0 keeps nothing.
    pub fn new(capacity: usize) -> Recent {
        Recent {
            capacity,
            sequence: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether it keeps anything (a capacity above 0).
    pub fn keeps_any(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sequence number to give a snapshot about to be begun.
    pub fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::Acquire)
    }

    /// The grain of `flow` at `nanos` if it is here and was committed no later than the
    /// snapshot numbered `sequence`.
    pub fn get(&self, flow: u128, nanos: i128, sequence: u64) -> Option<Grain> {
        let inner = self.lock();
        let (at, grain) = inner.grains.get(&(flow, nanos))?;
        (*at <= sequence).then(|| grain.clone())
    }

    /// Called by the committer once a commit is visible, before it answers: sessions
    /// begun from now on may take the commit's grains. Returns the commit's number, to
    /// give [`Recent::add`].
    pub fn publish(&self) -> u64 {
        let sequence = self.sequence.load(Ordering::Relaxed) + 1;
        self.sequence.store(sequence, Ordering::Release);
        sequence
    }

    /// Adds the grains that commit `sequence` stored (as they will be read back:
    /// creation timestamp set; payloads in their own buffers, not slices of an upload's). Called by the committer after answering the commit's
    /// writers (a session that looks before then reads the index, as it would without
    /// this cache) and before its next commit (whose deletes must find them).
    pub fn add(&self, sequence: u64, stored: Vec<(u128, Grain)>) {
        if self.capacity == 0 || stored.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for (flow, grain) in stored {
            let key = (flow, grain.origin_timestamp().to_nanos());
            inner.bytes += cost(&grain);
            if let Some((_, old)) = inner.grains.insert(key, (sequence, grain)) {
                inner.bytes -= cost(&old);
            }
            inner.order.push_back(key);
        }
        while inner.bytes > self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.remove(&oldest);
        }
        // Keys of entries deleted meanwhile stay in `order` until evicted; keep them
        // from piling up when grains are deleted as fast as they are written.
        if inner.order.len() > 2 * inner.grains.len() + 1024 {
            let Inner { grains, order, .. } = &mut *inner;
            order.retain(|key| grains.contains_key(key));
        }
    }

    /// Called by the committer before committing a delete: forgets the flow's grains
    /// inside `range` (all of them for `None`).
    pub fn forget(&self, flow: u128, range: Option<&TimeRange>) {
        let mut inner = self.lock();
        let doomed: Vec<Key> = inner
            .grains
            .keys()
            .filter(|(f, nanos)| {
                *f == flow
                    && range.is_none_or(|r| {
                        crate::time::Timestamp::from_nanos(*nanos).is_ok_and(|t| r.contains(t))
                    })
            })
            .copied()
            .collect();
        for key in doomed {
            inner.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grain::{GrainHeader, GrainKind};
    use crate::time::Timestamp;
    use bytes::Bytes;
    use uuid::Uuid;

    fn grain(second: i64, len: usize) -> Grain {
        let at = Timestamp::from_nanos(second as i128 * 1_000_000_000).unwrap();
        let header = GrainHeader::new(Uuid::nil(), Uuid::nil(), at, GrainKind::Empty);
        Grain::new(header, Bytes::from(vec![7u8; len])).unwrap()
    }

    fn add_committed(recent: &Recent, grains: Vec<(u128, Grain)>) {
        let sequence = recent.publish();
        recent.add(sequence, grains);
    }

    fn nanos(second: i64) -> i128 {
        second as i128 * 1_000_000_000
    }

    #[test]
    fn a_grain_is_seen_only_by_snapshots_begun_after_its_commit() {
        let recent = Recent::new(1 << 20);
        let before = recent.sequence();
        add_committed(&recent, vec![(1, grain(0, 10))]);
        let after = recent.sequence();
        assert!(recent.get(1, nanos(0), before).is_none());
        assert_eq!(recent.get(1, nanos(0), after).unwrap().payload().len(), 10);
        assert!(recent.get(2, nanos(0), after).is_none());
    }

    #[test]
    fn the_oldest_commits_go_first_and_the_bound_holds() {
        let recent = Recent::new(10 * (1000 + ENTRY_OVERHEAD));
        for s in 0..30 {
            add_committed(&recent, vec![(1, grain(s, 1000))]);
        }
        let now = recent.sequence();
        let kept: Vec<i64> = (0..30)
            .filter(|&s| recent.get(1, nanos(s), now).is_some())
            .collect();
        assert_eq!(kept, (20..30).collect::<Vec<_>>());
        assert!(recent.lock().bytes <= 10 * (1000 + ENTRY_OVERHEAD));
    }

    #[test]
    fn forgotten_grains_are_gone_and_their_keys_do_not_pile_up() {
        let recent = Recent::new(1 << 30);
        for s in 0..5000 {
            add_committed(&recent, vec![(1, grain(s, 1))]);
            recent.forget(1, None);
        }
        let inner = recent.lock();
        assert!(inner.grains.is_empty());
        assert_eq!(inner.bytes, 0);
        assert!(inner.order.len() <= 1025, "{}", inner.order.len());
    }

    #[test]
    fn forgetting_a_range_keeps_the_rest_and_other_flows() {
        let recent = Recent::new(1 << 20);
        add_committed(
            &recent,
            (0..4)
                .map(|s| (1, grain(s, 1)))
                .chain([(2, grain(1, 1))])
                .collect(),
        );
        let range: TimeRange = "[1:0_3:0)".parse().unwrap();
        recent.forget(1, Some(&range));
        let now = recent.sequence();
        let kept: Vec<i64> = (0..4)
            .filter(|&s| recent.get(1, nanos(s), now).is_some())
            .collect();
        assert_eq!(kept, [0, 3]);
        assert!(recent.get(2, nanos(1), now).is_some());
    }

    #[test]
    fn nothing_is_kept_without_capacity() {
        let recent = Recent::new(0);
        add_committed(&recent, vec![(1, grain(0, 1))]);
        assert!(recent.get(1, nanos(0), recent.sequence()).is_none());
        assert!(!recent.keeps_any());
    }
}
