//! A transaction on a pooled connection whose `BEGIN` travels with its first statements.
//!
//! tokio-postgres's own `Transaction` waits for the answer to `BEGIN` before it hands
//! out the transaction: a round trip of its own. [`Txn`] owns the connection and sends
//! `BEGIN` when its owner does, so that `BEGIN` and the first queries (prepared before,
//! once per connection) reach the server together and run in order. Dropped before
//! [`Txn::commit`], whatever the reason (an error, a retry, the request's future dropped
//! mid-way), it rolls back before the connection goes back to the pool, so that no
//! later user of the connection finds itself inside a transaction.

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::Object;
use deadpool_postgres::tokio_postgres::Error;

/// A transaction that its owner begins (see [`Txn::begin`]); rolled back when dropped.
pub struct Txn {
    /// Taken by `commit` and `Drop`.
    client: Option<Object>,
    /// Whether `BEGIN` was sent: only then does `Drop` roll back.
    begun: AtomicBool,
}

impl Txn {
    /// Takes `client` for a transaction: once it has begun, dropping the `Txn` rolls
    /// it back.
    pub fn new(client: Object) -> Txn {
        Txn {
            client: Some(client),
            begun: AtomicBool::new(false),
        }
    }

    /// The connection, for statements inside the transaction.
    pub fn client(&self) -> &Object {
        self.client
            .as_ref()
            .expect("a transaction's connection is only taken when it ends")
    }

    /// Sends `statement` (`BEGIN` and its options); sent when first polled, so that
    /// futures joined after it go to the server behind it, in the same round trip.
    pub async fn begin(&self, statement: &str) -> Result<(), Error> {
        self.begun.store(true, Ordering::Relaxed);
        self.client().batch_execute(statement).await
    }

    /// Commits. A connection whose `COMMIT` failed is closed instead of pooled: its
    /// state is unknown.
    pub async fn commit(mut self) -> Result<(), Error> {
        let client = self.client.take().expect("a transaction ends once");
        let committed = client.batch_execute("COMMIT").await;
        if committed.is_err() {
            drop(Object::take(client));
        }
        committed
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if !*self.begun.get_mut() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            // The connection returns to the pool once the transaction is over.
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = client.batch_execute("ROLLBACK").await {
                        tracing::debug!(error = %e, "ending a transaction failed");
                        drop(Object::take(client));
                    }
                });
            }
            // No runtime to end it on: close the connection instead of pooling it.
            Err(_) => drop(Object::take(client)),
        }
    }
}
