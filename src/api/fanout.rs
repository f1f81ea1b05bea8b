//! Per-flow fan-out of new grains to SSE subscribers.
//!
//! Without it every subscriber of a flow reads each new grain from its own snapshot and
//! encodes its own event: at a thousand subscribers, a thousand reads and encodings per
//! grain. A [`FlowFanout`] reads each new grain once, and its subscribers receive one
//! shared [`FanoutGrain`] whose SSE encodings are made once per payload mode and shared
//! as [`Bytes`].
//!
//! The fan-out keeps a small ring of the most recent grains (a `broadcast` channel of
//! `live.fanout_capacity` entries, shared by all subscribers). A subscriber that falls
//! further behind than the ring is told it lagged and goes back to reading from the
//! store, so a slow consumer never makes the server buffer for it. A fan-out runs while
//! it has subscribers: the last one to leave stops its task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::live::{PayloadMode, grain_event, newest_position, page_is_full, read_page};
use crate::grain::Grain;
use crate::store::{FlowId, Store, StoreError};
use crate::time::{Bound, Timestamp};

/// The fan-outs of the flows that have subscribers now.
pub struct Fanouts {
    inner: Arc<Registry>,
}

struct Registry {
    store: Arc<dyn Store>,
    /// Grains kept for subscribers that are a little behind (`live.fanout_capacity`).
    capacity: usize,
    /// Payloads up to this size are inline in SSE events (`live.inline_max_bytes`).
    inline_max: usize,
    /// A std mutex: held for a map look-up or insert, never across an await.
    flows: Mutex<HashMap<FlowId, Weak<FlowFanout>>>,
}

impl Fanouts {
    /// No fan-outs yet; each starts with its flow's first subscriber.
    pub fn new(store: Arc<dyn Store>, capacity: usize, inline_max: usize) -> Fanouts {
        Fanouts {
            inner: Arc::new(Registry {
                store,
                capacity: capacity.max(1),
                inline_max,
                flows: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The fan-out of `flow`, started if it has none.
    ///
    /// A new fan-out starts after the newest grain stored when it is made, read here,
    /// before it is handed out: every subscriber's catch-up from the store then reads a
    /// later snapshot than that, so whatever is committed after a subscriber's last
    /// catch-up read lies after the fan-out's start and is broadcast. (Read in the
    /// fan-out's own task instead, the start could land after a grain that a subscriber's
    /// empty catch-up read just missed, and that grain would reach nobody.)
    pub async fn join(&self, flow: FlowId) -> Result<Arc<FlowFanout>, StoreError> {
        if let Some(fanout) = self.running(flow) {
            return Ok(fanout);
        }
        let start = newest_position(&*self.inner.store, flow).await?;
        let mut flows = self.inner.flows.lock().unwrap_or_else(|e| e.into_inner());
        // Another subscriber may have made one meanwhile; its start was read before it
        // was handed out, so before this subscriber's catch-up too.
        if let Some(fanout) = flows.get(&flow).and_then(Weak::upgrade)
            && fanout.sender.strong_count() > 0
        {
            return Ok(fanout);
        }
        let (sender, _) = broadcast::channel(self.inner.capacity);
        let stop = CancellationToken::new();
        let weak_sender = sender.downgrade();
        tokio::spawn(run(
            self.inner.store.clone(),
            flow,
            start,
            sender,
            stop.clone(),
            self.inner.inline_max,
        ));
        let fanout = Arc::new(FlowFanout {
            flow,
            sender: weak_sender,
            _stop: stop.drop_guard(),
            registry: Arc::downgrade(&self.inner),
        });
        flows.insert(flow, Arc::downgrade(&fanout));
        Ok(fanout)
    }

    /// The fan-out of `flow` if one is running (one whose task ended on a store error
    /// is not: it is replaced, so new subscribers get a working one).
    fn running(&self, flow: FlowId) -> Option<Arc<FlowFanout>> {
        let flows = self.inner.flows.lock().unwrap_or_else(|e| e.into_inner());
        flows
            .get(&flow)
            .and_then(Weak::upgrade)
            .filter(|fanout| fanout.sender.strong_count() > 0)
    }

    /// Fan-outs running now (one per flow with subscribers).
    pub fn count(&self) -> usize {
        let flows = self.inner.flows.lock().unwrap_or_else(|e| e.into_inner());
        flows.values().filter(|f| f.strong_count() > 0).count()
    }
}

/// One flow's fan-out: a task that reads each newly committed grain once and broadcasts
/// it. Subscribers hold an `Arc`; when the last one drops, the task stops.
pub struct FlowFanout {
    flow: FlowId,
    /// Weak: the task holds the only strong sender, so when it ends (flow deleted, store
    /// error) receivers see the channel closed instead of waiting forever.
    sender: broadcast::WeakSender<Arc<FanoutItem>>,
    /// Stops the reading task when the fan-out is dropped.
    _stop: DropGuard,
    registry: Weak<Registry>,
}

impl FlowFanout {
    /// A receiver of what the fan-out broadcasts from now on; `None` once its task has
    /// ended.
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Arc<FanoutItem>>> {
        self.sender.upgrade().map(|sender| sender.subscribe())
    }
}

impl Drop for FlowFanout {
    fn drop(&mut self) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let mut flows = registry.flows.lock().unwrap_or_else(|e| e.into_inner());
        // A new fan-out may already have replaced this one: remove only a dead entry.
        if flows
            .get(&self.flow)
            .is_some_and(|entry| entry.strong_count() == 0)
        {
            flows.remove(&self.flow);
        }
    }
}

/// What a fan-out broadcasts.
// Always behind an `Arc`: the size of the small variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum FanoutItem {
    /// The next grain of the flow's live edge.
    Grain(FanoutGrain),
    /// The flow was deleted; the fan-out ends.
    FlowDeleted,
}

/// A grain as broadcast: its SSE event in each payload mode, encoded once, on first use.
pub struct FanoutGrain {
    flow: FlowId,
    timestamp: Timestamp,
    /// The grain while some encoding may still need it; `None` once every encoding is
    /// made (done at once for payloads too large to inline, so the ring never holds them).
    grain: Option<Grain>,
    inline_max: usize,
    events: [OnceLock<Bytes>; 3],
}

impl FanoutGrain {
    fn new(flow: FlowId, grain: Grain, inline_max: usize) -> FanoutGrain {
        let mut shared = FanoutGrain {
            flow,
            timestamp: grain.origin_timestamp(),
            grain: Some(grain),
            inline_max,
            events: Default::default(),
        };
        if shared
            .grain
            .as_ref()
            .is_some_and(|g| g.payload().len() > inline_max)
        {
            for mode in [PayloadMode::Inline, PayloadMode::Url, PayloadMode::None] {
                shared.event(mode);
            }
            shared.grain = None;
        }
        shared
    }

    /// The grain's origin timestamp.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The grain's SSE event in `mode`.
    pub fn event(&self, mode: PayloadMode) -> Bytes {
        let slot = match mode {
            PayloadMode::Inline => &self.events[0],
            PayloadMode::Url => &self.events[1],
            PayloadMode::None => &self.events[2],
        };
        slot.get_or_init(|| match &self.grain {
            Some(grain) => grain_event(self.flow, grain, mode, self.inline_max),
            // Unreachable: every encoding is made before the grain is let go.
            None => Bytes::new(),
        })
        .clone()
    }
}

/// The fan-out's task: from `start`, read what each commit adds after its position and
/// broadcast it. Ends when stopped, when the flow is deleted (after broadcasting that),
/// or on a store error (its subscribers then read from the store themselves).
async fn run(
    store: Arc<dyn Store>,
    flow: FlowId,
    start: Bound,
    sender: broadcast::Sender<Arc<FanoutItem>>,
    stop: CancellationToken,
    inline_max: usize,
) {
    // Commits between `start` and this subscription are found by the first read.
    let mut watch = store.watch(flow);
    let mut position = start;
    loop {
        // Mark the commits seen before reading, so one that lands during the read wakes
        // the wait below.
        watch.borrow_and_update();
        match read_page(&*store, flow, position, true).await {
            Ok(grains) if !grains.is_empty() => {
                // A page short of the page size ended at the newest grain of its snapshot:
                // nothing to read until the next commit (one since the read has marked the
                // watch already).
                let full = page_is_full(&grains);
                for grain in grains {
                    position = Bound::Exclusive(grain.origin_timestamp());
                    let item = FanoutItem::Grain(FanoutGrain::new(flow, grain, inline_max));
                    // No receivers is fine: subscribers may be between store reads.
                    let _ = sender.send(Arc::new(item));
                }
                if full {
                    continue;
                }
            }
            Ok(_) => {}
            Err(e) => return finish(&sender, flow, e),
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            changed = watch.changed() => {
                if changed.is_err() {
                    // The notifier dropped this flow's channel: subscribe again.
                    watch = store.watch(flow);
                }
            }
        }
    }
}

fn finish(sender: &broadcast::Sender<Arc<FanoutItem>>, flow: FlowId, error: StoreError) {
    match error {
        StoreError::FlowNotFound(_) => {
            let _ = sender.send(Arc::new(FanoutItem::FlowDeleted));
        }
        e => {
            tracing::warn!(flow_id = %flow, error = %e, "live fan-out stopped; subscribers read from the store")
        }
    }
}
