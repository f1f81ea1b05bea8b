//! The session pool: every read or write session holds a [`SessionPermit`], so the number
//! of open sessions is bounded and observable, and a permit's drop is the release.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::StoreError;

/// Bounds and counts open store sessions.
#[derive(Clone, Debug)]
pub struct SessionPool {
    semaphore: Arc<Semaphore>,
    active: Arc<AtomicUsize>,
    acquire_timeout: Duration,
    capacity: usize,
}

impl SessionPool {
    /// A pool of `capacity` sessions; acquiring waits at most `acquire_timeout`.
    pub fn new(capacity: usize, acquire_timeout: Duration) -> SessionPool {
        SessionPool {
            semaphore: Arc::new(Semaphore::new(capacity)),
            active: Arc::new(AtomicUsize::new(0)),
            acquire_timeout,
            capacity,
        }
    }

    /// Takes a place in the pool, or fails with [`StoreError::Busy`] after the timeout.
    pub async fn acquire(&self) -> Result<SessionPermit, StoreError> {
        let permit = match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tokio::time::timeout(self.acquire_timeout, self.semaphore.clone().acquire_owned())
                    .await
                    .map_err(|_| StoreError::Busy {
                        capacity: self.capacity,
                        waited: self.acquire_timeout,
                    })?
                    // The semaphore is never closed.
                    .map_err(|_| StoreError::Unavailable("session pool closed".into()))?
            }
        };
        self.active.fetch_add(1, Ordering::Relaxed);
        Ok(SessionPermit {
            _permit: permit,
            active: self.active.clone(),
        })
    }

    /// How many sessions are open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The most sessions that may be open at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A place in the [`SessionPool`], held by a session for its whole life.
#[derive(Debug)]
pub struct SessionPermit {
    _permit: OwnedSemaphorePermit,
    active: Arc<AtomicUsize>,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}
