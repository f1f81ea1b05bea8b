//! A transaction on a pooled connection whose `BEGIN` travels with its first statements.
//!
//! tokio-postgres's own `Transaction` waits for the answer to `BEGIN` before it hands
//! out the transaction: a round trip of its own. [`Txn`] owns the connection and sends
//! `BEGIN` when its owner does, so that `BEGIN` and the first queries (prepared before,
//! once per connection) reach the server together and run in order. Dropped before
//! [`Txn::commit`], whatever the reason (an error, a retry, the request's future dropped
//! mid-way), it rolls back before the connection goes back to the pool, so that no
//! later user of the connection finds itself inside a transaction.
//!
//! That `ROLLBACK` waits behind whatever the connection is still running (a dropped
//! reader's page query, a large delete, a wait for a flow's lock). Past a time limit the
//! running statement is cancelled (PostgreSQL's cancel request, on a connection of its
//! own), which stops work nobody waits for and releases its locks, and the connection
//! is closed, so that its backend rolls the transaction back and ends. It is not pooled
//! again: PostgreSQL acts on a cancel request when it gets to it, and a cancel that
//! arrived late could otherwise stop the next user's statement. If the cancel gets no
//! answer in time (a database that stopped answering), the connection is closed all the
//! same: its place in the pool is free again, and PostgreSQL rolls the transaction back
//! when its backend notices the closed connection (once its statement ends; on a frozen
//! host, once the host runs again). Until then that backend holds its locks and counts
//! against `max_connections` beside the pool's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Object;
use deadpool_postgres::tokio_postgres::{CancelToken, Error};
use futures::future::BoxFuture;

/// Sends PostgreSQL's cancel request for a connection's running statement.
pub type Cancel = Arc<dyn Fn(CancelToken) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// A transaction that its owner begins (see [`Txn::begin`]); rolled back when dropped.
pub struct Txn {
    /// Taken by `commit` and `Drop`.
    client: Option<Object>,
    /// Whether `BEGIN` was sent: only then does `Drop` roll back.
    begun: AtomicBool,
    /// How long `Drop`'s rollback, and the cancel after it, may each wait.
    within: Duration,
    /// How to cancel a statement that holds the rollback up; `None`: close at once.
    cancel: Option<Cancel>,
}

/// How a dropped transaction ended.
enum Ended {
    /// Rolled back: the connection can be pooled.
    RolledBack,
    /// Not rolled back (in time): the connection must be closed.
    Close,
}

impl Txn {
    /// Takes `client` for a transaction: once it has begun, dropping the `Txn` rolls
    /// it back; a rollback not answered `within` cancels the statement in its way with
    /// `cancel` (given as long) and closes the connection.
    pub fn new(client: Object, within: Duration, cancel: Option<Cancel>) -> Txn {
        Txn {
            client: Some(client),
            begun: AtomicBool::new(false),
            within,
            cancel,
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

/// Rolls back the transaction on `client` (see the module's documentation).
async fn roll_back(client: &Object, within: Duration, cancel: Option<Cancel>) -> Ended {
    match tokio::time::timeout(within, client.batch_execute("ROLLBACK")).await {
        Ok(Ok(())) => return Ended::RolledBack,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ending a transaction failed");
            return Ended::Close;
        }
        Err(_) => {}
    }
    let cancel = match cancel {
        None => "none sent".to_owned(),
        Some(cancel) => match tokio::time::timeout(within, cancel(client.cancel_token())).await {
            Ok(Ok(())) => "sent".to_owned(),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => "not answered in time".to_owned(),
        },
    };
    tracing::warn!(
        within_ms = within.as_millis() as u64,
        cancel = %cancel,
        "a dropped transaction's rollback got no answer in time; closing its connection \
         (its statement's cancel: see `cancel`)"
    );
    Ended::Close
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
                let (within, cancel) = (self.within, self.cancel.take());
                handle.spawn(async move {
                    if let Ended::Close = roll_back(&client, within, cancel).await {
                        drop(Object::take(client));
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
    use deadpool_postgres::tokio_postgres::{self, Client, Config, NoTls};
    use deadpool_postgres::{Manager, Pool};

    /// The settings of `GRAINSTORE_TEST_POSTGRES_URL`, or `None` (with a line saying
    /// so) when it is not set.
    fn settings() -> Option<Config> {
        let Ok(url) = std::env::var("GRAINSTORE_TEST_POSTGRES_URL") else {
            eprintln!(
                "skipped: set GRAINSTORE_TEST_POSTGRES_URL (as .ci/run does) to run this test"
            );
            return None;
        };
        Some(url.parse().expect("GRAINSTORE_TEST_POSTGRES_URL"))
    }

    async fn backend_pid(client: &Client) -> i32 {
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Asks `client` (another session) `query` about the backend `pid` until it says
    /// true; fails, naming `what`, if it never does.
    async fn until(client: &Client, query: &str, pid: i32, what: &str) {
        for _ in 0..1500 {
            let row = client.query_one(query, &[&pid]).await.unwrap();
            if row.get::<_, bool>(0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("backend {pid}: never {what}");
    }

    const WAITING: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)";
    const GONE: &str = "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)";

    /// The temporary table `t` if this session sees it: made inside a transaction, it
    /// is gone once that transaction was rolled back (inside it, or inside what is left
    /// of it after a failed statement, this query would fail or find it).
    async fn temp_table(client: &Client) -> Option<String> {
        client
            .query_one("SELECT to_regclass('pg_temp.t')::text", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Begins a transaction on `client` with the limit `within`, makes the temporary
    /// table `t` in it, and starts in it a statement that waits for the advisory lock
    /// `key` (which `holder` holds), its caller giving up on it once it waits; returns
    /// the transaction and its backend.
    async fn stuck(
        client: Object,
        within: Duration,
        cancel: Option<Cancel>,
        key: i64,
        holder: &Client,
    ) -> (Txn, i32) {
        let txn = Txn::new(client, within, cancel);
        txn.begin("BEGIN").await.unwrap();
        txn.client()
            .batch_execute("CREATE TEMP TABLE t (x int)")
            .await
            .unwrap();
        let pid = backend_pid(txn.client()).await;
        let lock = txn
            .client()
            .prepare("SELECT pg_advisory_xact_lock($1)")
            .await
            .unwrap();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        // Sent when first polled.
        let wait = txn.client().execute(&lock, &params);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), wait)
                .await
                .is_err(),
            "the lock was free"
        );
        until(holder, WAITING, pid, "waited for the lock").await;
        (txn, pid)
    }

    /// Dropped unfinished, a transaction is rolled back and its connection pooled again.
    /// One whose rollback waits behind a statement past the limit has that statement
    /// cancelled and its connection closed, and its backend ends; without a way to
    /// cancel, the connection is closed all the same, and the backend waits on.
    #[tokio::test]
    async fn a_dropped_transaction_rolls_back_or_cancels_and_closes() {
        let Some(config) = settings() else { return };
        let pool = Pool::builder(Manager::new(config.clone(), NoTls))
            .max_size(1)
            .build()
            .unwrap();
        // Another session holds the lock that the stuck statements wait for.
        let (holder, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        let key = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
        holder
            .execute("SELECT pg_advisory_lock($1)", &[&key])
            .await
            .unwrap();
        let cancel: Cancel =
            Arc::new(|token: CancelToken| Box::pin(async move { token.cancel_query(NoTls).await }));
        // Time enough for a rollback on a busy machine; the statements below never end
        // by themselves, so the limit is reached whatever it is.
        let within = Duration::from_secs(2);
        // Waits for the pool's connection, which comes back only when the dropped
        // transaction's task is done with it.
        let next = || async {
            tokio::time::timeout(Duration::from_secs(60), pool.get())
                .await
                .expect("the dropped transaction's connection never came back")
                .unwrap()
        };

        let client = pool.get().await.unwrap();
        let first = backend_pid(&client).await;
        let txn = Txn::new(client, within, Some(Arc::clone(&cancel)));
        txn.begin("BEGIN").await.unwrap();
        txn.client()
            .batch_execute("CREATE TEMP TABLE t (x int)")
            .await
            .unwrap();
        drop(txn);
        let client = next().await;
        assert_eq!(
            backend_pid(&client).await,
            first,
            "the connection was pooled"
        );
        assert_eq!(temp_table(&client).await, None, "not rolled back");

        // Stuck behind a lock wait: cancelled and closed; the backend ends.
        let (txn, pid) = stuck(client, within, Some(Arc::clone(&cancel)), key, &holder).await;
        drop(txn);
        let client = next().await;
        let second = backend_pid(&client).await;
        assert_ne!(second, pid, "the connection was closed");
        until(&holder, GONE, pid, "ended after the cancel").await;

        // The same without a way to cancel: closed, and its backend waits on.
        let (txn, pid) = stuck(client, within, None, key, &holder).await;
        drop(txn);
        let client = next().await;
        assert_ne!(backend_pid(&client).await, pid, "the connection was closed");
        let row = holder.query_one(WAITING, &[&pid]).await.unwrap();
        assert!(row.get::<_, bool>(0), "the backend stopped waiting");
        let ended: bool = client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(ended, "the closed connection's backend had already ended");
        holder
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await
            .unwrap();
    }
}
