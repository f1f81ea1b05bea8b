//! Per-flow commit notifications: live feeds wait on a [`CommitWatch`] and then read the
//! new grains from the store; the notification itself carries no data, so a slow
//! subscriber costs nothing here.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use super::FlowId;

/// What a subscriber learns on a commit: a counter that only grows, per flow.
pub type CommitSeq = u64;

/// A subscription to one flow's commits.
pub type CommitWatch = watch::Receiver<CommitSeq>;

/// Hands out [`CommitWatch`]es and wakes them.
#[derive(Debug, Default)]
pub struct Notifier {
    /// A std mutex: held only for a map look-up, never across an await.
    flows: Mutex<HashMap<FlowId, watch::Sender<CommitSeq>>>,
}

impl Notifier {
    /// Subscribes to commits of `flow`.
    pub fn watch(&self, flow: FlowId) -> CommitWatch {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        flows
            .entry(flow)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes every subscriber of `flow`; forgets flows nobody watches any more.
    pub fn notify(&self, flow: FlowId) {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = flows.get(&flow) {
            if sender.receiver_count() == 0 {
                flows.remove(&flow);
            } else {
                sender.send_modify(|seq| *seq += 1);
            }
        }
    }
}
