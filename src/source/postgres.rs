//! PostgreSQL through a deadpool-postgres pool: one query per group, `$1` = the key as text.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::{Source, SourceFuture};
use crate::cache::error::SourceError;
use crate::cache::group::Group;

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    /// The query of each group, indexed by `Group::index`.
    pub queries: [String; 2],
}

pub struct PostgresSource {
    pool: Pool,
    queries: Arc<[String; 2]>,
    /// Client-side bound on one fetch: the statement timeout plus the wait for a connection.
    deadline: Duration,
}

impl PostgresSource {
    /// Builds the pool. No connection is made until the first fetch, so a node starts while its
    /// database is still coming up.
    pub fn new(config: &PostgresConfig) -> Result<Self, SourceError> {
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| SourceError::Unavailable(format!("bad database url: {e}")))?;
        pg.connect_timeout(config.connect_timeout);
        pg.application_name("geecache");
        pg.options(format!(
            "-c statement_timeout={}",
            config.statement_timeout.as_millis()
        ));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.statement_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| SourceError::Unavailable(format!("cannot build pool: {e}")))?;
        Ok(PostgresSource {
            pool,
            queries: Arc::new(config.queries.clone()),
            deadline: config.statement_timeout + config.connect_timeout,
        })
    }

    async fn query(
        pool: Pool,
        queries: Arc<[String; 2]>,
        group: Group,
        key: String,
    ) -> Result<Option<Bytes>, SourceError> {
        let client = pool.get().await.map_err(pool_error)?;
        let stmt = client
            .prepare_typed_cached(&queries[group.index()], &[Type::TEXT])
            .await
            .map_err(query_error)?;
        let row = client
            .query_opt(&stmt, &[&key])
            .await
            .map_err(query_error)?;
        let Some(row) = row else { return Ok(None) };
        let value = if row.columns().first().map(|c| c.type_()) == Some(&Type::BYTEA) {
            Bytes::copy_from_slice(row.try_get::<_, &[u8]>(0).map_err(query_error)?)
        } else {
            Bytes::copy_from_slice(row.try_get::<_, &str>(0).map_err(query_error)?.as_bytes())
        };
        Ok(Some(value))
    }
}

fn pool_error(e: PoolError) -> SourceError {
    match e {
        PoolError::Backend(e) => query_error(e),
        other => SourceError::Unavailable(other.to_string()),
    }
}

fn query_error(e: tokio_postgres::Error) -> SourceError {
    match e.code() {
        Some(c) if *c == SqlState::QUERY_CANCELED => SourceError::Timeout(e.to_string()),
        Some(c) if c.code().starts_with("08") || c.code().starts_with("57") => {
            SourceError::Unavailable(e.to_string())
        }
        Some(_) => SourceError::Query(
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string()),
        ),
        // No SQLSTATE: the connection itself failed (refused, reset, closed).
        None => SourceError::Unavailable(e.to_string()),
    }
}

impl Source for PostgresSource {
    fn fetch(&self, group: Group, key: &str) -> SourceFuture {
        let fut = Self::query(
            self.pool.clone(),
            Arc::clone(&self.queries),
            group,
            key.to_owned(),
        );
        let deadline = self.deadline;
        Box::pin(async move {
            tokio::time::timeout(deadline, fut)
                .await
                .unwrap_or_else(|_| {
                    Err(SourceError::Timeout(format!(
                        "no answer within {} ms",
                        deadline.as_millis()
                    )))
                })
        })
    }
}
