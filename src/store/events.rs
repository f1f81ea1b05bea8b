//! The service-wide event log: what changed in the store (TAMS event types), retained in a
//! bounded window so a subscriber can resume by event id, and broadcast as it happens.
//!
//! Event ids are `<epoch>-<sequence>`: the epoch changes whenever the log starts afresh
//! (a restart), so an id from before it is recognisably too old and the subscriber is
//! told to reset instead of silently missing events.
//!
//! A store shared by several replicas (the PostgreSQL backend) numbers events in its
//! database instead, so that an id means the same event on every replica: it builds the
//! log with [`EventLog::with_epoch`] and records events with [`EventLog::publish_with_id`].

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::broadcast;

use super::{FlowId, SourceId};
use crate::time::Timestamp;

/// One change in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreEvent {
    /// The event's id, for resumption.
    pub id: EventId,
    /// TAMS event type: `flows/created`, `flows/grains_added`, ...
    pub event_type: &'static str,
    /// When it happened (TAI).
    pub timestamp: Timestamp,
    /// The flow concerned, if any (for filtering).
    pub flow_id: Option<FlowId>,
    /// The source concerned, if any (for filtering).
    pub source_id: Option<SourceId>,
    /// The event body: the resource, or what changed in it.
    pub body: Value,
}

/// A position in the event log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventId {
    /// Which incarnation of the log.
    pub epoch: u64,
    /// The event's place in it, from 1.
    pub seq: u64,
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl std::str::FromStr for EventId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (epoch, seq) = s.split_once('-').ok_or(())?;
        Ok(EventId {
            epoch: epoch.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// Where a subscription starts.
#[derive(Debug)]
pub enum Resume {
    /// The retained events after the given id (oldest first), then the live ones.
    From(Vec<StoreEvent>),
    /// The id is older than the retained window or from another epoch: events were lost.
    Reset,
}

/// The retained window and the live broadcast.
pub struct EventLog {
    epoch: u64,
    /// A std mutex: held to append or copy out, never across an await.
    state: Mutex<LogState>,
    sender: broadcast::Sender<StoreEvent>,
    retain: usize,
    /// Ids are assigned elsewhere ([`EventLog::publish_with_id`]): an id ahead of this
    /// log is one this replica has not received yet, not a stale one.
    external_ids: bool,
}

struct LogState {
    next_seq: u64,
    window: VecDeque<StoreEvent>,
}

impl EventLog {
    /// A log retaining the last `retain` events.
    pub fn new(retain: usize) -> EventLog {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        EventLog {
            epoch,
            state: Mutex::new(LogState {
                next_seq: 1,
                window: VecDeque::with_capacity(retain.min(4096)),
            }),
            sender: broadcast::channel(retain.clamp(16, 65536)).0,
            retain: retain.max(1),
            external_ids: false,
        }
    }

    /// A log retaining the last `retain` events whose ids are assigned by the caller:
    /// `epoch` is fixed (a constant of the shared database) and events are recorded with
    /// [`EventLog::publish_with_id`].
    pub fn with_epoch(retain: usize, epoch: u64) -> EventLog {
        let mut log = EventLog::new(retain);
        log.epoch = epoch;
        log.external_ids = true;
        log
    }

    /// The epoch of this log's ids.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records and broadcasts an event numbered elsewhere. Ids must grow: an event whose
    /// `seq` is not above the newest recorded one is a repeated delivery and is ignored
    /// (returns false).
    pub fn publish_with_id(
        &self,
        seq: u64,
        timestamp: Timestamp,
        event_type: &'static str,
        flow_id: Option<FlowId>,
        source_id: Option<SourceId>,
        body: Value,
    ) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if seq < state.next_seq {
            return false;
        }
        let event = StoreEvent {
            id: EventId {
                epoch: self.epoch,
                seq,
            },
            event_type,
            timestamp,
            flow_id,
            source_id,
            body,
        };
        state.next_seq = seq + 1;
        if state.window.len() == self.retain {
            state.window.pop_front();
        }
        state.window.push_back(event.clone());
        // Sent under the lock so that subscribers see events in id order.
        let _ = self.sender.send(event);
        true
    }

    /// Records and broadcasts an event.
    pub fn publish(
        &self,
        event_type: &'static str,
        flow_id: Option<FlowId>,
        source_id: Option<SourceId>,
        body: Value,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let event = StoreEvent {
            id: EventId {
                epoch: self.epoch,
                seq: state.next_seq,
            },
            event_type,
            timestamp: Timestamp::now(),
            flow_id,
            source_id,
            body,
        };
        state.next_seq += 1;
        if state.window.len() == self.retain {
            state.window.pop_front();
        }
        state.window.push_back(event.clone());
        // Sent under the lock so that subscribers see events in id order.
        let _ = self.sender.send(event);
    }

    /// Subscribes to live events, starting after `after` when given (else from now).
    ///
    /// Also returns the subscription's position: `after` when it is resumable, else the
    /// id of the newest event now (sequence 0 before the first). A subscriber keeps its
    /// position current and resubscribes from it if it falls behind the broadcast, so
    /// a position is always one of this log's ids: never absent, which would skip what
    /// it missed, nor one that no event will ever pass, which would skip everything.
    pub fn subscribe(
        &self,
        after: Option<EventId>,
    ) -> (Resume, EventId, broadcast::Receiver<StoreEvent>) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = self.sender.subscribe();
        let now = EventId {
            epoch: self.epoch,
            seq: state.next_seq - 1,
        };
        let Some(after) = after else {
            return (Resume::From(Vec::new()), now, receiver);
        };
        let oldest_retained = state.window.front().map_or(state.next_seq, |e| e.id.seq);
        // With ids from a shared database, an id this replica has not reached yet was
        // handed out by another replica a moment ago: continue live after it (the
        // position skips the events up to it when they arrive here).
        if self.external_ids && after.epoch == self.epoch && after.seq >= state.next_seq {
            return (Resume::From(Vec::new()), after, receiver);
        }
        // Resumable when the next event the client needs is still retained (or not yet
        // published) and the id is from this incarnation.
        if after.epoch != self.epoch
            || after.seq + 1 < oldest_retained
            || after.seq >= state.next_seq
        {
            return (Resume::Reset, now, receiver);
        }
        let backlog = state
            .window
            .iter()
            .filter(|e| e.id.seq > after.seq)
            .cloned()
            .collect();
        (Resume::From(backlog), after, receiver)
    }

    /// The id of the newest event, if any.
    pub fn last_id(&self) -> Option<EventId> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.window.back().map(|e| e.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(log: &EventLog, n: usize) {
        for _ in 0..n {
            log.publish("flows/created", None, None, Value::Null);
        }
    }

    #[test]
    fn a_subscription_from_now_has_a_position_that_detects_loss() {
        let log = EventLog::new(4);
        let (_, position, _) = log.subscribe(None);
        assert_eq!(position.seq, 0);
        publish(&log, 3);
        let (resume, _, _) = log.subscribe(Some(position));
        assert!(matches!(resume, Resume::From(backlog) if backlog.len() == 3));
        publish(&log, 3);
        // The first event after the position is gone: a reset, not a silent gap.
        let (resume, now, _) = log.subscribe(Some(position));
        assert!(matches!(resume, Resume::Reset));
        assert_eq!(now, log.last_id().expect("an event"));
    }

    #[test]
    fn a_reset_moves_the_position_to_now() {
        let log = EventLog::new(4);
        publish(&log, 2);
        let future = EventId {
            epoch: log.epoch + 1,
            seq: 1,
        };
        let (resume, position, mut receiver) = log.subscribe(Some(future));
        assert!(matches!(resume, Resume::Reset));
        publish(&log, 1);
        let next = receiver.try_recv().expect("a live event");
        assert!(next.id > position, "live events follow the position");
    }
}
