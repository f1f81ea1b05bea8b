//! Flows recently seen writable, so that opening a write session on one of them needs no
//! query.
//!
//! Opening a write session checks the flow (it exists, it is not read-only) so that an
//! upload to an unknown or read-only flow is refused before its body is read. Every
//! commit checks the flow again inside its transaction, under a share lock on the flow's
//! row: that check decides, this one only answers early. So a flow the replica saw
//! writable a moment ago is taken as writable without asking PostgreSQL again.
//!
//! Only "writable" is remembered (a flow created on another replica must never be
//! refused here), and only until the flow changes: an update or delete made through this
//! replica, or one the listener reports from any replica, forgets it, and entries age
//! out after [`TTL`] whatever happens. A lookup that began before a change must not store
//! what it saw: every change bumps a generation, and an answer is kept only if the
//! generation is the one read before the query was sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::FlowId;

/// How long a flow seen writable is taken as writable without asking again.
pub const TTL: Duration = Duration::from_secs(10);

/// At this many entries, expired ones are dropped when one is added (and all of them if
/// more than half are live).
const PRUNE_ABOVE: usize = 4096;

/// The flows seen writable, and the generation of flow changes.
#[derive(Debug, Default)]
pub struct Writable {
    seen: Mutex<HashMap<FlowId, Instant>>,
    generation: AtomicU64,
}

impl Writable {
    /// Whether `flow` was seen writable within [`TTL`].
    pub fn recently(&self, flow: FlowId) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&flow).is_some_and(|at| at.elapsed() < TTL)
    }

    /// The generation to pass to [`Writable::saw`], read before the lookup is sent.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers that a lookup sent at `generation` found `flow` writable, unless a flow
    /// changed since.
    pub fn saw(&self, flow: FlowId, generation: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Compared under the lock: `changed` bumps the generation before it takes the
        // lock to forget, so an answer it could have made stale is never kept.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if seen.len() >= PRUNE_ABOVE {
            seen.retain(|_, at| at.elapsed() < TTL);
            // Still full of live entries: forgetting is always safe, and the map is not
            // scanned again for every flow added.
            if seen.len() >= PRUNE_ABOVE / 2 {
                seen.clear();
            }
        }
        seen.insert(flow, Instant::now());
    }

    /// Forgets `flow`, which was updated or deleted (committed), or which a commit found
    /// deleted or read-only.
    pub fn changed(&self, flow: FlowId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(&flow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_seen_writable_is_remembered_until_it_changes() {
        let writable = Writable::default();
        let (a, b) = (FlowId::new_v4(), FlowId::new_v4());
        assert!(!writable.recently(a));
        writable.saw(a, writable.generation());
        writable.saw(b, writable.generation());
        assert!(writable.recently(a) && writable.recently(b));
        writable.changed(a);
        assert!(!writable.recently(a));
        assert!(
            writable.recently(b),
            "another flow's change forgets only that flow"
        );
    }

    #[test]
    fn an_answer_older_than_a_change_is_not_kept() {
        let writable = Writable::default();
        let flow = FlowId::new_v4();
        // The lookup is sent, the flow changes (through any flow), the answer comes.
        let sent_at = writable.generation();
        writable.changed(FlowId::new_v4());
        writable.saw(flow, sent_at);
        assert!(!writable.recently(flow));
        writable.saw(flow, writable.generation());
        assert!(writable.recently(flow));
    }

    #[test]
    fn expired_entries_are_pruned_when_many() {
        let writable = Writable::default();
        let old = Instant::now().checked_sub(TTL * 2).expect("a past instant");
        {
            let mut seen = writable.seen.lock().unwrap();
            for _ in 0..PRUNE_ABOVE {
                seen.insert(FlowId::new_v4(), old);
            }
        }
        let flow = FlowId::new_v4();
        writable.saw(flow, writable.generation());
        {
            let seen = writable.seen.lock().unwrap();
            assert_eq!(seen.len(), 1, "the expired entries went");
            assert!(seen.contains_key(&flow));
        }
        // Full of live entries: all are forgotten, the new one kept.
        for _ in 1..PRUNE_ABOVE {
            writable.saw(FlowId::new_v4(), writable.generation());
        }
        let flow = FlowId::new_v4();
        writable.saw(flow, writable.generation());
        let seen = writable.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen.contains_key(&flow));
    }
}
