//! The PostgreSQL store's own tests, on a server they start themselves: the conformance suite, and
//! what only a shared store has (claimers and notifiers in several processes, one job per key
//! across processes, migrations, LISTEN/NOTIFY wake-ups, a corrupt record, the URI's options).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::NoTls;

use super::rows::{TABLE_JOBS, id_bytes, status_column};
use super::{JOBS_CHANNEL, PgStore, parse_uri, schema, test_server};
use crate::model::job::{Job, JobId, Status, Timestamp, WorkerId};
use crate::store::test_support::request;
use crate::store::{
    ClaimNotice, JobReader, OrchestratorStore, StateStore, StoreError, StoreResult, SubmitOutcome,
    WebhookStore, codec, conformance, test_support,
};

/// The event bound of the conformance suite's stores, as for sled's.
const CONFORMANCE_EVENTS_MAX: u64 = 16;

/// A server of this test's own and a fresh schema `name` on it.
async fn fresh_schema(name: &str) -> (test_server::TestServer, String) {
    let server = test_server::TestServer::start().await;
    let uri = server.fresh_schema(name).await;
    (server, uri)
}

/// [`fresh_schema`], and a store opened on it.
async fn fresh_store(name: &str) -> (test_server::TestServer, String, PgStore) {
    let (server, uri) = fresh_schema(name).await;
    let store = PgStore::open(&uri).await.expect("open");
    (server, uri, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_postgres() {
    let server = test_server::TestServer::start().await;
    let count = AtomicU64::new(0);
    let stores = Arc::new(std::sync::Mutex::new(Vec::new()));
    conformance::run_all(|| async {
        let index = count.fetch_add(1, Ordering::Relaxed);
        let uri = server.fresh_schema(&format!("conformance_{index}")).await;
        let store = PgStore::open(&uri)
            .await
            .expect("open the PostgreSQL store");
        store.set_events_max(CONFORMANCE_EVENTS_MAX);
        stores.lock().expect("lock").push(uri);
        store
    })
    .await;
    // Every schema the suite left behind is consistent, as sled's trees are.
    let uris = stores.lock().expect("lock").clone();
    assert!(uris.len() > 10, "the suite made {} stores", uris.len());
    for uri in uris {
        let store = PgStore::open(&uri).await.expect("reopen");
        if let Err(error) = store.check_consistency().await {
            panic!("{uri} after the conformance suite: {error}");
        }
    }
    server.cleanup().await;
}

// Guards the fleet's webhook rule: notifiers in eight processes claiming the due notices of
// 20 finished jobs at once each claim a different one, and every notice is claimed exactly
// once (the claim moves its due time ahead, SKIP LOCKED passes over one being claimed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_notifiers_never_claim_the_same_notice() {
    let (server, uri, store) = fresh_store("notifiers").await;
    let jobs_total = 20;
    let mut hooks = Vec::new();
    for index in 0..jobs_total {
        let job = store
            .submit(&request(&format!("hooked-{index}")))
            .await
            .expect("submit")
            .job;
        hooks.push((job.id, format!("https://hooks.example.com/{index}")));
    }
    store.set_webhooks(&hooks).await.expect("set_webhooks");
    for (id, _) in &hooks {
        store.cancel(*id).await.expect("cancel").expect("allowed");
    }
    let now = Timestamp::now().plus_ms(1);
    let mut notifiers = Vec::new();
    for _ in 0..8 {
        let store = PgStore::open(&uri).await.expect("open");
        notifiers.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            loop {
                match store.claim_notice(now, 600_000).await.expect("claim") {
                    ClaimNotice::Claimed(webhook) => claimed.push(webhook.job_id),
                    // Due but being claimed by another notifier: ask again.
                    ClaimNotice::Wait { until: Some(until) } if until <= now => {
                        tokio::task::yield_now().await;
                    }
                    ClaimNotice::Wait { .. } => return claimed,
                }
            }
        }));
    }
    let mut claimed = Vec::new();
    for notifier in notifiers {
        claimed.extend(notifier.await.expect("notifier task"));
    }
    let distinct: BTreeSet<JobId> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), jobs_total, "{claimed:?}");
    assert_eq!(distinct.len(), jobs_total);
    store.check_consistency().await.expect("consistent");
    server.cleanup().await;
}

// Guards claiming across processes: eight claimers, each with a pool of its own (as eight
// narra processes would have), take forty jobs and never the same one twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_share_a_job() {
    let (server, uri, store) = fresh_store("claimers").await;
    let mut claimers: Vec<Arc<dyn StateStore>> = Vec::new();
    for _ in 0..8 {
        claimers.push(Arc::new(PgStore::open(&uri).await.expect("open")));
    }
    test_support::claim_concurrently(
        &store,
        claimers,
        |claimer| WorkerId(format!("test:{claimer}:1")),
        40,
    )
    .await;
    store.check_consistency().await.expect("consistent");
    server.cleanup().await;
}

// Guards idempotent submission across processes: the same new key submitted at once by many
// stores is one job (the losers of the key's unique index run their transaction again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_of_one_key_make_one_job() {
    let (server, uri) = fresh_schema("submitters").await;
    let mut submitters = Vec::new();
    for _ in 0..6 {
        let store = PgStore::open(&uri).await.expect("open");
        submitters.push(tokio::spawn(async move {
            store.submit(&request("same")).await.expect("submit")
        }));
    }
    let mut ids = BTreeSet::new();
    let mut created = 0;
    for submitter in submitters {
        let submitted = submitter.await.expect("submitter task");
        ids.insert(submitted.job.id);
        if submitted.outcome == SubmitOutcome::Created {
            created += 1;
        }
    }
    assert_eq!(ids.len(), 1, "one job for the key");
    assert_eq!(created, 1, "one submission created it");
    server.cleanup().await;
}

// Guards the migrations: opening a store applies them once; a second open (or `narra
// migrate`) applies nothing; a schema newer than this narra is refused, not used.
#[tokio::test]
async fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let (server, uri, store) = fresh_store("migrations").await;
    assert!(store.migrate().await.expect("migrate").is_empty());
    let client = store.client().await.expect("client");
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("versions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: Vec<i32> = schema::MIGRATIONS
        .iter()
        .map(|(version, _)| *version)
        .collect();
    assert_eq!(versions, expected);
    client
        .execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(schema::latest_version() + 1)],
        )
        .await
        .expect("a future migration");
    match PgStore::open(&uri).await {
        Err(StoreError::UnsupportedMigration { found, supported }) => {
            assert_eq!(
                (found, supported),
                (schema::latest_version() + 1, schema::latest_version())
            );
        }
        other => panic!("expected UnsupportedMigration, got {other:?}"),
    }
    server.cleanup().await;
}

// Guards the wake-up: a transaction that makes a job pending notifies `narra_jobs` at commit.
#[tokio::test]
async fn a_new_pending_job_notifies_the_jobs_channel() {
    let (server, uri, store) = fresh_store("notify").await;
    let (config, _, _) = parse_uri(&uri).expect("parse");
    let (client, mut connection) = config.connect(NoTls).await.expect("connect");
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                let _ = sender.send(notification.channel().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {JOBS_CHANNEL}"))
        .await
        .expect("listen");
    store.submit(&request("wake")).await.expect("submit");
    let channel = tokio::time::timeout(std::time::Duration::from_secs(30), receiver.recv())
        .await
        .expect("a notification within 30 s")
        .expect("the listener is running");
    assert_eq!(channel, JOBS_CHANNEL);
    drop(client);
    driver.abort();
    server.cleanup().await;
}

// Guards waking idle workers through LISTEN/NOTIFY: a scheduler waiting for work (with a
// timeout far beyond the test's patience) returns when another process submits a job, and
// again when another process's running job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_wait_ends_when_another_process_submits_or_finishes_a_job() {
    let (server, uri) = fresh_schema("wakeup").await;
    let waiting = Arc::new(PgStore::open(&uri).await.expect("open"));
    let other = PgStore::open(&uri).await.expect("open");
    assert!(
        waiting
            .listener
            .listening(std::time::Duration::from_secs(30))
            .await,
        "the listener subscribes"
    );
    let patience = std::time::Duration::from_secs(60);
    let forever = std::time::Duration::from_secs(24 * 3600);

    let wait = tokio::spawn({
        let waiting = Arc::clone(&waiting);
        async move { waiting.wait_for_work(forever).await }
    });
    let submitted = other.submit(&request("wake")).await.expect("submit");
    tokio::time::timeout(patience, wait)
        .await
        .expect("the submission wakes the wait")
        .expect("wait task");

    let (_, token) = other
        .claim(submitted.job.id, &WorkerId("other:1".into()), 60_000)
        .await
        .expect("claim")
        .expect("claimable");
    // The claim made no job pending; a permit it may have left is used up here.
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(1),
        waiting.wait_for_work(forever),
    )
    .await;
    let wait = tokio::spawn({
        let waiting = Arc::clone(&waiting);
        async move { waiting.wait_for_work(forever).await }
    });
    test_support::complete(&other, &token).await;
    tokio::time::timeout(patience, wait)
        .await
        .expect("a job that stops running wakes the wait")
        .expect("wait task");
    server.cleanup().await;
}

// Guards fault isolation on PostgreSQL (as sled's test of the same name): garbage in
// one job's record is an error naming the `jobs` table and that job wherever it is read, and
// `check_consistency` reports it; `claim_next` passes over it and the other jobs still run.
#[tokio::test]
async fn a_corrupted_job_record_is_named_and_leaves_the_other_jobs_working() {
    let (server, _, store) = fresh_store("corrupt").await;
    let corrupted = store.submit(&request("corrupted")).await.expect("submit");
    let healthy = store.submit(&request("healthy")).await.expect("submit");
    let corrupted_id = corrupted.job.id;
    let key_hex = codec::hex(&corrupted_id.to_bytes());
    let garbage = test_support::garbage_record();
    store
        .client()
        .await
        .expect("client")
        .execute(
            "UPDATE jobs SET record = $1 WHERE id = $2",
            &[&garbage, &id_bytes(corrupted_id)],
        )
        .await
        .expect("corrupt the record");

    let names_the_job = |result: StoreResult<Option<Job>>| match result {
        Err(StoreError::Corrupt { tree, key, .. }) => {
            assert_eq!((tree, key.as_str()), (TABLE_JOBS, key_hex.as_str()));
        }
        other => panic!("expected Corrupt naming the job, got {other:?}"),
    };
    names_the_job(store.job(corrupted_id).await);
    names_the_job(store.job_by_key("corrupted").await);
    assert!(matches!(
        store.check_consistency().await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.cancel(corrupted_id).await,
        Err(StoreError::Corrupt { .. })
    ));
    let (_, token) = conformance::claim_next_as(&store, &WorkerId("test:1:1".into()))
        .await
        .expect("the healthy job is claimable");
    assert_eq!(token.job_id, healthy.job.id);
    let done = test_support::complete(&store, &token).await;
    assert_eq!(done.status, Status::Succeeded);
    server.cleanup().await;
}

// Guards the literal `status = 0` of the claim queries and the `jobs_pending` index.
#[test]
fn pending_is_status_zero() {
    assert_eq!(status_column(Status::Pending), 0);
    assert!(schema::MIGRATIONS[0].1.contains("WHERE status = 0"));
}

#[test]
fn pool_max_is_narras_and_the_rest_goes_to_tokio_postgres() {
    let (config, options, display) =
        parse_uri("postgres://narra:secret@127.0.0.1:5433/narra?pool_max=4&connect_timeout=3")
            .expect("parse");
    assert_eq!(options.pool_max, 4);
    assert_eq!(config.get_dbname(), Some("narra"));
    assert_eq!(
        config.get_connect_timeout(),
        Some(&std::time::Duration::from_secs(3))
    );
    assert!(!display.contains("secret"), "{display}");
    assert!(parse_uri("postgres://h/db?pool_max=0").is_err());
}

// Guards the fleet against a stopped process: sessions end when idle inside a transaction
// (so a SIGSTOPped worker cannot hold the claim lock), unless the URI sets its own timeout; the
// URI's other server options are kept, several of them too (a space, `%20`, separates them).
#[test]
fn sessions_idle_in_a_transaction_are_ended_unless_the_uri_says_otherwise() {
    let (config, _, _) =
        parse_uri("postgres://h/db?options=-csearch_path%3Dingest").expect("parse");
    assert_eq!(
        config.get_options(),
        Some("-csearch_path=ingest -c idle_in_transaction_session_timeout=10000")
    );
    let (config, _, _) =
        parse_uri("postgres://h/db?options=-csearch_path%3Dingest%20-cwork_mem%3D8MB&pool_max=2")
            .expect("parse");
    assert_eq!(
        config.get_options(),
        Some("-csearch_path=ingest -cwork_mem=8MB -c idle_in_transaction_session_timeout=10000")
    );
    let (config, _, _) =
        parse_uri("postgres://h/db?options=-cidle_in_transaction_session_timeout%3D0")
            .expect("parse");
    assert_eq!(
        config.get_options(),
        Some("-cidle_in_transaction_session_timeout=0")
    );
}
