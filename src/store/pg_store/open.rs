//! Opening a PostgreSQL store: the pool (no connection until the first use), the schema
//! migrations (`schema.rs`), and a connection from the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::listen::Listener;
use super::logs::LogBuffer;
use super::{PgStore, parse_uri, schema};
use crate::store::{StoreError, StoreResult};

impl PgStore {
    /// Connects to the server `uri` names (`postgres://user:password@host:port/database`, plain
    /// TCP or a Unix socket directory as `host`), and applies the schema migrations it lacks.
    pub async fn open(uri: &str) -> StoreResult<PgStore> {
        let store = PgStore::connect(uri).await?;
        store.migrate().await?;
        tracing::debug!(uri = %store.display, "opened state store");
        Ok(store)
    }

    /// Sets up the pool without touching the schema (`narra migrate` applies it then). No
    /// connection is made until the first use.
    pub async fn connect(uri: &str) -> StoreResult<PgStore> {
        let (config, options, display) = parse_uri(uri)?;
        let listener = Listener::new(config.clone());
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_max)
            .build()
            .map_err(|error| StoreError::Pool(error.to_string()))?;
        let store = PgStore {
            logs: Arc::new(LogBuffer::new(pool.clone())),
            pool,
            display,
            events_max: AtomicU64::new(crate::store::EVENTS_MAX),
            listener,
        };
        tracing::debug!(uri = %store.display, pool_max = options.pool_max, "state store pool");
        Ok(store)
    }

    /// Applies the migrations the schema lacks (see `schema.rs`); returns those applied.
    pub async fn migrate(&self) -> StoreResult<Vec<i32>> {
        let mut client = self.client().await?;
        schema::migrate(&mut client).await
    }

    /// The newest migration the schema has had (0 for an empty database).
    pub async fn schema_version(&self) -> StoreResult<i32> {
        let client = self.client().await?;
        let exists: Option<String> = client
            .query_one("SELECT to_regclass('schema_migrations')::text", &[])
            .await?
            .get(0);
        if exists.is_none() {
            return Ok(0);
        }
        let version: Option<i32> = client
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await?
            .get(0);
        Ok(version.unwrap_or(0))
    }

    /// The URI the store was opened with, its password hidden.
    pub fn uri(&self) -> &str {
        &self.display
    }

    /// Sets the most events a job holds (at least 1): `store::EVENTS_MAX` unless a test, or
    /// `NARRA_EVENTS_MAX`, asks for less.
    pub fn set_events_max(&self, events_max: u64) {
        self.events_max.store(events_max.max(1), Ordering::Relaxed);
    }

    /// How many log lines `append_log` failed to write since the store was opened.
    pub fn log_lines_dropped(&self) -> u64 {
        self.logs.dropped()
    }
}

impl PgStore {
    pub(super) async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|error| match error {
            deadpool_postgres::PoolError::Backend(error) => StoreError::Postgres(error),
            other => StoreError::Pool(other.to_string()),
        })
    }
}
