//! PostgreSQL through deadpool-postgres pools: each group's query, `$1` = the key as text,
//! prepared once per connection (tokio-postgres's statement cache), its one column read as the
//! group's value (`source::values`).
//!
//! **Loads cannot write.** Every session is read-only (`default_transaction_read_only`), and at
//! startup each group's query runs once in a transaction that is rolled back: a query that
//! writes (`DELETE … RETURNING`, a data-modifying `WITH`, `nextval`) is refused there, naming
//! the group, and never runs at a client's request.
//!
//! **Values are bounded while they are read.** A value of a variable-length type is read
//! through `SELECT CASE WHEN octet_length(v) > max THEN NULL ELSE v END, octet_length(v) FROM
//! (query) AS geecache_value(v)`: a row over `--max-value-bytes` crosses the wire as its length
//! alone (PostgreSQL reads a stored value's length from its header), so the node never holds
//! it, and it is remembered as too large for `TOO_LARGE_FOR` so that a storm of requests does
//! not ask again each time.
//!
//! The connections are split into lanes, one pool per loader: a tokio-postgres connection is a
//! task on the runtime that opened it, so with one shared pool a query sent from one loader's
//! thread would often be written and read by another thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use moka::sync::Cache as Moka;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::values::{self, Raw};
use super::{PrepareFuture, Source, SourceFuture};
use crate::error::SourceError;
use crate::group::{Group, Groups};

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: String,
    /// Connections in all, split over `lanes` pools.
    pub pool_size: usize,
    /// Pools (one per loader); at most `pool_size`.
    pub lanes: usize,
    /// Queries one connection takes at once (pipelined); 1: one at a time.
    pub pipeline: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    /// Values larger than this are refused without being read (`--max-value-bytes`).
    pub max_value_bytes: usize,
}

/// How long a key whose value was too large answers so without asking PostgreSQL again. A row
/// made smaller is read again at most this long after.
const TOO_LARGE_FOR: Duration = Duration::from_secs(5);

/// A lane's connections, each taking up to `depth` queries at once. tokio-postgres pipelines
/// the queries of one connection (writes them together, reads the answers in order), so a
/// few connections kept busy cost PostgreSQL and the node far fewer wake-ups than many
/// connections taking one query each. A query goes to the first connection with room, so
/// a lane opens a second connection only when the first is full, up to its share of
/// `pool_size`; the price is that a slow query delays the (at most `depth - 1`) queries queued
/// behind it on its connection.
struct Lane {
    pool: Pool,
    /// Each group's size-guarded query text, by `Group::index`, made once.
    guarded: Guarded,
    want: usize,
    depth: usize,
    conns: std::sync::Mutex<Conns>,
}

#[derive(Default)]
struct Conns {
    open: Vec<Shared>,
    /// Connections being opened (counted against `want`).
    opening: usize,
}

/// A connection and how many queries it has in flight.
#[derive(Clone)]
struct Shared {
    client: Arc<deadpool_postgres::Object>,
    in_flight: Arc<AtomicUsize>,
}

/// One query's claim on a connection, released when dropped.
struct Claim(Shared);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lane {
    /// A connection for one query: the first with room; a new one while the lane has fewer
    /// than its share; else the least busy.
    async fn claim(&self) -> Result<Claim, SourceError> {
        loop {
            let open_one = {
                let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
                c.open.retain(|s| !s.client.is_closed());
                let room = c
                    .open
                    .iter()
                    .find(|s| s.in_flight.load(Ordering::Acquire) < self.depth);
                if let Some(s) = room.or_else(|| {
                    (c.open.len() + c.opening >= self.want)
                        .then(|| {
                            c.open
                                .iter()
                                .min_by_key(|s| s.in_flight.load(Ordering::Acquire))
                        })
                        .flatten()
                }) {
                    s.in_flight.fetch_add(1, Ordering::AcqRel);
                    return Ok(Claim(s.clone()));
                }
                if c.open.len() + c.opening < self.want {
                    c.opening += 1;
                    true
                } else {
                    false // every connection is still being opened
                }
            };
            if !open_one {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let got = self.pool.get().await;
            let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            c.opening -= 1;
            let shared = Shared {
                client: Arc::new(got.map_err(pool_error)?),
                in_flight: Arc::new(AtomicUsize::new(1)),
            };
            c.open.push(shared.clone());
            return Ok(Claim(shared));
        }
    }
}

pub struct PostgresSource {
    pools: Vec<Arc<Lane>>,
    /// What each pool is built from (also the startup check's own connection).
    pg: tokio_postgres::Config,
    connect_timeout: Duration,
    statement_timeout: Duration,
    groups: Groups,
    /// Client-side bound on one fetch: the statement timeout plus the wait for a connection.
    deadline: Duration,
    max_value_bytes: usize,
    /// Keys (group index, key) whose value was over `max_value_bytes`, and why.
    too_large: Moka<(usize, String), SourceError>,
}

/// Each group's size-guarded query text (`guarded_sql`), made at its first use from the value's
/// type then (a different type later, after a schema change, is made afresh): not formatted
/// again at every miss.
type Guarded = Vec<OnceLock<(Type, Option<String>)>>;

/// A group's query, prepared: the statement run, the value's type, and whether the statement
/// is the size-guarded wrapper (its second column the value's length).
struct Prepared {
    stmt: tokio_postgres::Statement,
    ty: Type,
    guarded: bool,
}

impl PostgresSource {
    /// Builds the pools. No connection is made until the first fetch (or `prepare`), so a node
    /// starts while its database is still coming up.
    pub fn new(config: &PostgresConfig, groups: Groups) -> Result<Self, SourceError> {
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| SourceError::Unavailable(format!("bad database url: {e}")))?;
        pg.connect_timeout(config.connect_timeout);
        pg.application_name("geecache");
        pg.options(format!(
            "-c statement_timeout={} -c default_transaction_read_only=on",
            config.statement_timeout.as_millis()
        ));
        let lanes = config.lanes.clamp(1, config.pool_size.max(1));
        let pools = (0..lanes)
            // pool_size split as evenly as it goes: 16 over 3 lanes is 6, 5, 5.
            .map(|i| config.pool_size / lanes + usize::from(i < config.pool_size % lanes))
            .map(|size| {
                build_pool(
                    &pg,
                    size.max(1),
                    config.connect_timeout,
                    config.statement_timeout,
                )
            })
            .map(|pool: Result<Pool, SourceError>| {
                pool.map(|pool| {
                    Arc::new(Lane {
                        guarded: groups.all().map(|_| OnceLock::new()).collect(),
                        want: pool.status().max_size,
                        depth: config.pipeline.max(1),
                        pool,
                        conns: Default::default(),
                    })
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(PostgresSource {
            pools,
            pg,
            connect_timeout: config.connect_timeout,
            statement_timeout: config.statement_timeout,
            groups,
            deadline: config.statement_timeout + config.connect_timeout,
            max_value_bytes: config.max_value_bytes,
            too_large: Moka::builder()
                .max_capacity(10_000)
                .time_to_live(TOO_LARGE_FOR)
                .build(),
        })
    }

    /// Prepares `group`'s query on `client` and checks its result: one column of a value type.
    /// The first success tells the group its content type.
    async fn plain(
        client: &deadpool_postgres::Client,
        group: Group,
    ) -> Result<(tokio_postgres::Statement, Type), SourceError> {
        let stmt = client
            .prepare_typed_cached(&group.def().query, &[Type::TEXT])
            .await
            .map_err(query_error)?;
        let ty = match stmt.columns() {
            [one] => one.type_().clone(),
            cols => {
                return Err(SourceError::Query(format!(
                    "group {group}: its query returns {} columns; it must return one",
                    cols.len()
                )));
            }
        };
        let content_type = values::content_type(&ty).ok_or_else(|| {
            SourceError::Query(format!("group {group}: {}", values::unsupported(&ty)))
        })?;
        group.learn_content_type(content_type);
        Ok((stmt, ty))
    }

    /// The group's query as it is run: for a variable-length value, wrapped so that a value
    /// over `max` bytes is not sent (see the module's doc).
    async fn statement(
        client: &deadpool_postgres::Client,
        group: Group,
        max: usize,
        guarded: &Guarded,
    ) -> Result<Prepared, SourceError> {
        let (stmt, ty) = Self::plain(client, group).await?;
        let made = || guarded_sql(&group.def().query, &ty, max);
        let (first, once) = guarded[group.index()].get_or_init(|| (ty.clone(), made()));
        let afresh;
        let sql = if *first == ty {
            once.as_deref()
        } else {
            afresh = made();
            afresh.as_deref()
        };
        let Some(sql) = sql else {
            return Ok(Prepared {
                stmt,
                ty,
                guarded: false,
            });
        };
        let stmt = client
            .prepare_typed_cached(sql, &[Type::TEXT])
            .await
            .map_err(|e| {
                SourceError::Query(format!(
                    "group {group}: its query cannot be read as a subquery, which bounds its \
                     values' size ({})",
                    query_error(e)
                ))
            })?;
        Ok(Prepared {
            stmt,
            ty,
            guarded: true,
        })
    }

    async fn query(
        lane: Arc<Lane>,
        group: Group,
        key: String,
        max: usize,
    ) -> Result<Option<Bytes>, SourceError> {
        let claim = lane.claim().await?;
        let client = &claim.0.client;
        let p = Self::statement(client, group, max, &lane.guarded).await?;
        let row = client
            .query_opt(&p.stmt, &[&key])
            .await
            .map_err(query_error)?;
        let Some(row) = row else { return Ok(None) };
        let value = row.try_get::<_, Option<Raw>>(0).map_err(query_error)?;
        if p.guarded
            && value.is_none()
            && let Some(len) = row.try_get::<_, Option<i64>>(1).map_err(query_error)?
        {
            return Err(too_large(len as u64, max));
        }
        match value {
            // A NULL value is no value: the key is not found.
            None => Ok(None),
            Some(Raw(raw)) => values::to_bytes(&p.ty, raw)
                .map(Some)
                .map_err(|e| SourceError::Query(format!("group {group}: {e}"))),
        }
    }

    /// Runs the group's query once in a transaction that is rolled back; whether PostgreSQL
    /// refused it as a write in a read-only session (the reason, naming the group). Any other
    /// error of the probe (e.g. its key `''` is not of the key's type) says nothing about
    /// writing, and is left to the requests.
    async fn refuse_writes(
        client: &mut deadpool_postgres::Client,
        group: Group,
    ) -> Result<(), String> {
        let (stmt, _) = Self::plain(client, group)
            .await
            .map_err(|e| e.to_string())?;
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        // A generic plan: with the probe's key folded into a custom plan, a cast of it (`''` as
        // an `int`) would fail while planning, before the executor checks for writes.
        tx.batch_execute("SET LOCAL plan_cache_mode = force_generic_plan")
            .await
            .map_err(|e| e.to_string())?;
        match tx.query(&stmt, &[&""]).await {
            Err(e) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => Err(format!(
                "group {group}: its query writes ({}); a group's query must only read, and \
                 the nodes' sessions are read-only",
                e.as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_owned())
            )),
            _ => Ok(()), // dropped: rolled back
        }
    }
}

fn build_pool(
    pg: &tokio_postgres::Config,
    size: usize,
    connect_timeout: Duration,
    statement_timeout: Duration,
) -> Result<Pool, SourceError> {
    let manager = Manager::from_config(
        pg.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(statement_timeout))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout))
        .build()
        .map_err(|e| SourceError::Unavailable(format!("cannot build pool: {e}")))
}

/// The size-guarded form of `query` for a value of type `ty` (see the module's doc), or `None`
/// for a type whose values are small (numbers, booleans). The query's own trailing `;` would
/// end the subquery, and a trailing `--` comment would hide its closing parenthesis.
fn guarded_sql(query: &str, ty: &Type, max: usize) -> Option<String> {
    let len = match *ty {
        Type::BYTEA | Type::TEXT | Type::VARCHAR | Type::BPCHAR => "octet_length(v)",
        Type::JSON | Type::JSONB => "octet_length(v::text)",
        _ => return None,
    };
    let query = query.trim_end().trim_end_matches(';');
    Some(format!(
        "SELECT CASE WHEN {len} > {max} THEN NULL ELSE v END, {len}::int8 \
         FROM ({query}\n) AS geecache_value(v)"
    ))
}

fn too_large(len: u64, max: usize) -> SourceError {
    SourceError::TooLarge(format!(
        "the value is {len} bytes, larger than --max-value-bytes {max}"
    ))
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
    fn fetch(&self, lane: usize, group: Group, key: &str) -> SourceFuture {
        let pool = self.pools[lane % self.pools.len()].clone();
        let (max, remembered) = (self.max_value_bytes, (group.index(), key.to_owned()));
        if let Some(e) = self.too_large.get(&remembered) {
            return Box::pin(async move { Err(e) });
        }
        let fut = Self::query(pool, group, key.to_owned(), max);
        let (deadline, too_large_keys) = (self.deadline, self.too_large.clone());
        Box::pin(async move {
            let fetched = tokio::time::timeout(deadline, fut)
                .await
                .unwrap_or_else(|_| {
                    Err(SourceError::Timeout(format!(
                        "no answer within {} ms",
                        deadline.as_millis()
                    )))
                });
            if let Err(e @ SourceError::TooLarge(_)) = &fetched {
                too_large_keys.insert(remembered, e.clone());
            }
            fetched
        })
    }

    /// Prepares every group's query once at startup: a query PostgreSQL rejects, or one whose
    /// result is not one column of a value type, stops the node with the group's name. A
    /// database that cannot be reached does not: the node starts, and its misses answer 503
    /// until the database is back.
    ///
    /// It uses a connection of its own, closed after: one opened here would stay on this
    /// thread's runtime, and a lane's queries would hop to it.
    fn prepare(&self) -> PrepareFuture {
        let pool = build_pool(&self.pg, 1, self.connect_timeout, self.statement_timeout);
        let (groups, max) = (self.groups, self.max_value_bytes);
        Box::pin(async move {
            let pool = pool.map_err(|e| e.to_string())?;
            let guarded: Guarded = groups.all().map(|_| OnceLock::new()).collect();
            let mut client = match pool.get().await {
                Ok(client) => client,
                Err(e) => {
                    tracing::warn!(error = %pool_error(e), "database not reachable at startup; misses answer 503 until it is");
                    return Ok(());
                }
            };
            for group in groups.all() {
                let checked = match Self::refuse_writes(&mut client, group).await {
                    Err(why) if why.starts_with("group ") => return Err(why),
                    _ => Self::statement(&client, group, max, &guarded)
                        .await
                        .map(drop),
                };
                match checked {
                    Ok(()) => {}
                    Err(SourceError::Query(why)) if why.starts_with("group ") => return Err(why),
                    Err(SourceError::Query(why)) => {
                        return Err(format!(
                            "group {group}: PostgreSQL refused its query ({}): {why}",
                            group.def().query
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "database not reachable at startup; misses answer 503 until it is");
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }

    fn pools(&self) -> Vec<super::PoolStatus> {
        self.pools
            .iter()
            .enumerate()
            .map(|(lane, l)| {
                let c = l.conns.lock().unwrap_or_else(|e| e.into_inner());
                super::PoolStatus {
                    lane,
                    max: l.want,
                    size: c.open.len(),
                    idle: c
                        .open
                        .iter()
                        .filter(|s| s.in_flight.load(Ordering::Acquire) == 0)
                        .count(),
                    waiting: l.pool.status().waiting,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_split_into_lanes_that_add_up_to_its_size() {
        let lanes = |pool_size, lanes| {
            let config = PostgresConfig {
                url: "postgres://u@127.0.0.1:1/db".into(),
                pool_size,
                lanes,
                pipeline: 32,
                connect_timeout: Duration::from_secs(1),
                statement_timeout: Duration::from_secs(1),
                max_value_bytes: 1 << 20,
            };
            let source = PostgresSource::new(&config, Groups::demo()).unwrap();
            source.pools().iter().map(|p| p.max).collect::<Vec<_>>()
        };
        assert_eq!(lanes(16, 2), [8, 8]);
        assert_eq!(lanes(16, 3), [6, 5, 5]);
        // Fewer connections than loaders: loaders share lanes (lane % pools).
        assert_eq!(lanes(2, 4), [1, 1]);
        assert_eq!(lanes(5, 0), [5]);
    }
}
