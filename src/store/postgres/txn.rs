//! A transaction on a pooled connection whose `BEGIN` travels with its first statements.
//!
//! tokio-postgres's own `Transaction` waits for the answer to `BEGIN` before it hands
//! out the transaction: a round trip of its own. [`Txn`] owns the connection and sends
//! `BEGIN` when its owner does, so that `BEGIN` and the first queries (prepared before,
//! once per connection) reach the server together and run in order. Dropped before
//! [`Txn::commit`], whatever the reason (an error, a retry, the request's future dropped
//! mid-way), it rolls back before the connection goes back to the pool, so that no
//! later user of the connection finds itself inside a transaction. A rollback that gets
//! no answer in time (a database that stopped answering, a statement still running)
//! closes the connection instead, which ends the transaction as surely and frees its
//! place in the pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Object;
use deadpool_postgres::tokio_postgres::Error;

/// A transaction that its owner begins (see [`Txn::begin`]); rolled back when dropped.
pub struct Txn {
    /// Taken by `commit` and `Drop`.
    client: Option<Object>,
    /// Whether `BEGIN` was sent: only then does `Drop` roll back.
    begun: AtomicBool,
    /// How long `Drop`'s rollback may wait for its answer.
    rollback_within: Duration,
}

impl Txn {
    /// Takes `client` for a transaction: once it has begun, dropping the `Txn` rolls
    /// it back, or closes the connection if the rollback is not answered within
    /// `rollback_within`.
    pub fn new(client: Object, rollback_within: Duration) -> Txn {
        Txn {
            client: Some(client),
            begun: AtomicBool::new(false),
            rollback_within,
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
                let within = self.rollback_within;
                handle.spawn(async move {
                    let ended =
                        tokio::time::timeout(within, client.batch_execute("ROLLBACK")).await;
                    match ended {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "ending a transaction failed");
                            drop(Object::take(client));
                        }
                        Err(_) => {
                            tracing::warn!(
                                within_ms = within.as_millis() as u64,
                                "a transaction's rollback got no answer in time; \
                                 closing its connection"
                            );
                            drop(Object::take(client));
                        }
                    }
                });
            }
            // No runtime to end it on: close the connection instead of pooling it.
            Err(_) => drop(Object::take(client)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool_postgres::tokio_postgres::{Config, NoTls};
    use deadpool_postgres::{Manager, Pool};

    /// A pool of one connection to the PostgreSQL of `GRAINSTORE_TEST_POSTGRES_URL`, or
    /// `None` (with a line saying so) when it is not set.
    fn pool() -> Option<Pool> {
        let Ok(url) = std::env::var("GRAINSTORE_TEST_POSTGRES_URL") else {
            eprintln!(
                "skipped: set GRAINSTORE_TEST_POSTGRES_URL (as .ci/run does) to run this test"
            );
            return None;
        };
        let config: Config = url.parse().expect("GRAINSTORE_TEST_POSTGRES_URL");
        let manager = Manager::new(config, NoTls);
        Some(Pool::builder(manager).max_size(1).build().unwrap())
    }

    async fn backend_pid(client: &Object) -> i32 {
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Dropped unfinished, a transaction is rolled back and its connection pooled again;
    /// a rollback that waits behind a statement longer than allowed closes it instead,
    /// so the pool's next connection is a new one, handed out without waiting for the
    /// statement.
    #[tokio::test]
    async fn a_dropped_transaction_rolls_back_or_closes_its_connection() {
        let Some(pool) = pool() else { return };
        let within = Duration::from_millis(200);

        let client = pool.get().await.unwrap();
        let first = backend_pid(&client).await;
        let txn = Txn::new(client, within);
        txn.begin("BEGIN").await.unwrap();
        txn.client()
            .batch_execute("CREATE TEMP TABLE t (x int)")
            .await
            .unwrap();
        drop(txn);
        let client = pool.get().await.unwrap();
        assert_eq!(
            backend_pid(&client).await,
            first,
            "the connection was pooled"
        );
        // Rolled back: the table it made is gone (still inside the transaction, this
        // session would see it).
        let table: Option<String> = client
            .query_one("SELECT to_regclass('pg_temp.t')::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(table, None);

        let txn = Txn::new(client, within);
        txn.begin("BEGIN").await.unwrap();
        // A statement that runs for half a minute; its caller gives up on it at once.
        let slow = txn.client().batch_execute("SELECT pg_sleep(30)");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), slow)
                .await
                .is_err()
        );
        drop(txn);
        // Without the limit this would wait for the statement, then get `first` back.
        let client = pool.get().await.unwrap();
        assert_ne!(
            backend_pid(&client).await,
            first,
            "the connection was closed"
        );
    }
}
