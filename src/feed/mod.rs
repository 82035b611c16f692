//! The change feed: PostgreSQL tells every node (and frontend) which cached keys changed, in a
//! way that loses nothing.
//!
//! **In the database** (`geecache db feed install`): for every `invalidate = [{ table, key }]`
//! entry of a group, row triggers on the table (insert, update, delete) write the changed row's
//! key, computed by the entry's SQL expression over the old and the new row, to
//! `geecache.changes (xid, grp, key, at)`. The row carries the writing transaction's id
//! (`pg_current_xact_id()`), and becomes visible when that transaction commits. No NOTIFY: it
//! takes a lock at every writer's commit (see docs/change-feed.md), and a notification sent
//! while a node is disconnected is lost anyway.
//!
//! **On a node** ([`follow`]): a connection of its own polls every `feed_poll` (5 ms). A poll
//! reads, in one statement (one snapshot), the current snapshot and every row of a transaction
//! that the previous poll's snapshot did not see as committed: its xid is at or past the
//! previous `xmax`, or in the previous in-progress list. That is exactly the set of rows that
//! became visible since the previous poll, whatever order their transactions committed in; so a
//! poll after a disconnect replays everything missed, and nothing is read twice. Invalidations
//! commute (each only drops a key and moves its version forward), so they need no order among
//! themselves.
//!
//! **What can go wrong, and what the node does**: the connection is killed, PostgreSQL
//! restarts, the network is cut: the node reconnects and its next poll replays what it missed
//! (`geecache_feed_replays_total{cause}`). Rows were pruned before the node read them (it was
//! away longer than the retention): it drops every entry of the feed-backed groups
//! (`geecache_feed_drops_total{cause}`). A node restarts: its caches are empty, it starts from
//! the current snapshot. While the node has not completed a poll for `max_staleness`, values
//! of feed-backed groups count as expired from then (the group's stale windows apply): it does
//! not answer them as fresh.
//!
//! **Pruning**: each node records how far it has read in `geecache.consumers`; one node at a
//! time (an advisory lock) deletes the rows every consumer seen in the last minute has read,
//! and rows older than the retention whatever the consumers, recording the bound in
//! `geecache.feed_state.pruned_below`, which is how a node that was away finds out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::cache::{Core, FeedState};
use crate::clock;
use crate::group::Group;

pub mod db;

use self::db as feed_db;

/// A poll that takes longer than this counts as a lost connection.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node records its position (and one of them prunes).
const RECORD_EVERY: Duration = Duration::from_secs(5);
/// The most rows one poll reads (its page): more, and the node drops the feed-backed groups
/// instead of applying them one by one. With keys of at most `MAX_KEY_BYTES` (longer ones are
/// no cache key, and the poll skips them without reading them), a poll reads at most about
/// 10 MiB, however large the transaction or the rows someone wrote into the feed: no row or
/// transaction makes every poll time out. `POLL` says `LIMIT PAGE_ROWS + 1`.
pub const PAGE_ROWS: usize = 10_000;
/// At most this often, and at least 4 times per `max_staleness`, a node checks that the
/// triggers of its feed-backed groups are in place and firing.
const TRIGGER_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A PostgreSQL snapshot, as `pg_current_snapshot()` prints it: `xmin:xmax:xip,...`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Every transaction below it has ended.
    pub xmin: u64,
    /// Every transaction at or past it had not begun.
    pub xmax: u64,
    /// Transactions between the two that were in progress.
    pub xip: Vec<u64>,
}

impl Snapshot {
    pub fn parse(s: &str) -> Option<Snapshot> {
        let mut parts = s.trim().split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next() {
            Some("") | None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(Snapshot { xmin, xmax, xip })
    }

    /// The oldest transaction whose rows this snapshot did not see as committed.
    pub fn oldest_unseen(&self) -> u64 {
        self.xip
            .iter()
            .copied()
            .min()
            .unwrap_or(self.xmax)
            .min(self.xmax)
    }
}

/// How a node follows the feed.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    pub database_url: String,
    /// This node's name in `geecache.consumers`.
    pub consumer: String,
    pub connect_timeout: Duration,
    /// Rows older than this are pruned even if a consumer has not read them.
    pub retention: Duration,
    /// How often it polls (the feed's heartbeat, and its latency).
    pub poll_every: Duration,
}

/// One change: a key of a group, its transaction, how long ago it was written.
#[derive(Debug)]
struct Change(String, String, u64, f64);

/// The poll, in one statement so that it reads one snapshot: a first row with the snapshot and
/// the prune bound, then the rows that became visible since the previous poll, one page of
/// them (`PAGE_ROWS`). A key longer than a cache key, or a group name longer than a group's, is
/// skipped by its length alone (`octet_length` of a stored value reads its header, not the
/// value): such a row names nothing a node holds.
const POLL: &str = "SELECT pg_current_snapshot()::text, (SELECT pruned_below::text FROM geecache.feed_state), \
        NULL::text, NULL::text, NULL::float8 \
    UNION ALL (SELECT NULL, NULL, grp, key || chr(1) || xid::text, \
        extract(epoch FROM clock_timestamp() - at)::float8 FROM geecache.changes \
        WHERE (xid >= $1::text::xid8 OR xid = ANY($2::text[]::xid8[])) \
        AND octet_length(key) <= 1024 AND octet_length(grp) <= 64 LIMIT 10001)";

struct Follower {
    core: Arc<Core>,
    settings: FeedSettings,
    /// Group names of the feed-backed groups.
    groups: BTreeMap<&'static str, Group>,
    /// The previous poll's snapshot.
    prev: Option<Snapshot>,
    last_record: Instant,
    /// Whether this node's position has been recorded since it started.
    recorded: bool,
    /// The triggers each feed-backed group needs (`feed_db`), and what the last check found.
    triggers: Vec<GroupTriggers>,
    /// `feed_db::PRESENT_SQL`'s arguments for every group's triggers, in their order.
    present_args: (Vec<String>, Vec<String>),
    last_trigger_check: Option<Instant>,
}

/// One group's triggers: the entries' objects, and the OIDs of their triggers at the last
/// check (`None`: not checked yet; a `None` inside: that trigger missing or disabled).
struct GroupTriggers {
    group: Group,
    entries: Vec<feed_db::EntryObjects>,
    seen: Option<Vec<Option<i64>>>,
}

impl Follower {
    fn state(&self) -> &FeedState {
        self.core.feed()
    }

    /// Drops every entry of the feed-backed groups (they may have missed changes).
    fn drop_all(&self, cause: &'static str) {
        for group in self.groups.values() {
            self.core.drop_group(*group);
        }
        metrics::counter!("geecache_feed_drops_total", "cause" => cause).increment(1);
        tracing::warn!(cause, "feed: dropped every entry of the feed-backed groups");
    }

    /// One poll on `client`; applies what it read.
    /// `prepared` is the session's `POLL`, prepared by its first poll: a query by text is
    /// parsed, planned and described by PostgreSQL each time (two round trips), at every
    /// `--feed-poll` of every node.
    async fn poll(
        &mut self,
        client: &tokio_postgres::Client,
        prepared: &mut Option<tokio_postgres::Statement>,
    ) -> Result<(), tokio_postgres::Error> {
        let statement = match prepared {
            Some(s) => s.clone(),
            None => prepared.insert(client.prepare(POLL).await?).clone(),
        };
        let sent = clock::now_ms();
        let (from, xip) = match &self.prev {
            Some(p) => (
                p.xmax.to_string(),
                p.xip.iter().map(u64::to_string).collect(),
            ),
            // The first poll only learns where it stands.
            None => (u64::MAX.to_string(), Vec::<String>::new()),
        };
        let rows = client.query(&statement, &[&from, &xip]).await?;
        let (mut snap, mut pruned_below, mut changes) = (Snapshot::default(), 0u64, Vec::new());
        for row in &rows {
            if let Some(s) = row.get::<_, Option<&str>>(0) {
                snap = Snapshot::parse(s).unwrap_or_default();
                pruned_below = row
                    .get::<_, Option<&str>>(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                continue;
            }
            let (grp, key_xid): (String, String) = (row.get(2), row.get(3));
            let Some((key, xid)) = key_xid.rsplit_once('\u{1}') else {
                continue;
            };
            let age: f64 = row.get::<_, Option<f64>>(4).unwrap_or(0.0);
            changes.push(Change(grp, key.to_owned(), xid.parse().unwrap_or(0), age));
        }
        let complete_from = |s: &Snapshot| self.state().complete_from(s.xmax);
        match &self.prev {
            // The first read: from here on, no change can be missed, and the groups may cache
            // (a load that began before this point is not kept, see `Loader::populate`).
            None => {
                complete_from(&snap);
                for group in self.groups.values() {
                    self.core.mark_followed(*group);
                }
                tracing::info!(position = snap.xmin, "feed: following");
            }
            Some(prev) if pruned_below > prev.oldest_unseen() => {
                complete_from(&snap);
                self.drop_all("pruned")
            }
            Some(_) if changes.len() > PAGE_ROWS => {
                complete_from(&snap);
                self.drop_all("too_many")
            }
            Some(_) => self.apply(&changes),
        }
        self.prev = Some(snap.clone());
        self.state().polled(sent, snap.xmin);
        metrics::gauge!("geecache_feed_position").set(snap.xmin as f64);
        Ok(())
    }

    fn apply(&self, changes: &[Change]) {
        for Change(grp, key, xid, delay) in changes {
            let Some(group) = self.groups.get(grp.as_str()) else {
                continue; // another node's group
            };
            if key.is_empty() {
                // A TRUNCATE of one of the group's tables: every key may have changed.
                self.core.drop_group(*group);
                metrics::counter!("geecache_feed_drops_total", "cause" => "truncate").increment(1);
                tracing::info!(group = %group, "feed: a table was truncated; dropped the group");
                continue;
            }
            self.core.invalidate_from_feed(*group, key, *xid);
            metrics::histogram!("geecache_feed_delay_seconds").record(*delay);
        }
    }

    /// Records this node's position; one node at a time prunes what every consumer has read.
    async fn record(&mut self, client: &tokio_postgres::Client) {
        // Every RECORD_EVERY, and once as soon as there is a position to record.
        let first = self.prev.is_some() && !self.recorded;
        if self.last_record.elapsed() < RECORD_EVERY && !first {
            return;
        }
        self.last_record = Instant::now();
        let retention = format!("{} milliseconds", self.settings.retention.as_millis());
        self.recorded |= self.prev.is_some();
        if let Some(prev) = &self.prev {
            let position = prev.oldest_unseen().to_string();
            let sql = "SELECT geecache.record($1, $2::text::xid8)";
            if let Err(e) = client
                .execute(sql, &[&self.settings.consumer, &position])
                .await
            {
                tracing::warn!(error = %e, "feed: could not record the position");
                return;
            }
        }
        // Also when no poll has completed (this runs before each connection's first poll): a
        // feed that no poll gets through is still pruned past the retention, and the node
        // then drops its groups and goes on from there.
        if let Err(e) = client
            .execute("SELECT geecache.prune($1::text::interval)", &[&retention])
            .await
        {
            tracing::warn!(error = %e, "feed: prune failed");
        }
    }

    /// Checks, at most every `TRIGGER_CHECK_EVERY` (and 4 times per `max_staleness`), that
    /// each feed-backed group's triggers are in place and firing. A group whose triggers are
    /// missing or disabled would never hear of a change: it is dropped and caches nothing
    /// (every read is a load) until they are back. A trigger that was dropped and created
    /// again between two checks has a new OID: changes in between may have been missed, so
    /// the group is dropped too.
    async fn check_triggers(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let every = Duration::from_millis(self.state().max_staleness_ms() / 4)
            .clamp(self.settings.poll_every, TRIGGER_CHECK_EVERY);
        if self.last_trigger_check.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        self.last_trigger_check = Some(Instant::now());
        // One query for every group's triggers, two per entry, in the groups' order.
        let (tables, names) = &self.present_args;
        let rows = client.query(feed_db::PRESENT_SQL, &[tables, names]).await?;
        let mut oids = rows.iter().map(|r| r.get::<_, Option<i64>>(1));
        let mut names = names.iter();
        for g in &mut self.triggers {
            let n = 2 * g.entries.len();
            let now: Vec<Option<i64>> = oids.by_ref().take(n).collect();
            let missing: Vec<&str> = names
                .by_ref()
                .take(n)
                .zip(&now)
                .filter(|(_, oid)| oid.is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            let was_missing = g
                .seen
                .as_ref()
                .is_some_and(|s| s.iter().any(Option::is_none));
            let renewed = g.seen.as_ref().is_some_and(|s| {
                s.iter()
                    .zip(&now)
                    .any(|(a, b)| a.is_some() && b.is_some() && a != b)
            });
            let group = g.group;
            if !missing.is_empty() {
                if !self.core.unfed(group) {
                    self.core.set_unfed(group, true);
                    self.core.drop_group(group);
                    tracing::error!(group = %group, ?missing,
                        "feed: the group's triggers are missing or disabled (geecache db feed install); it caches nothing until they are back");
                }
            } else if was_missing || renewed || self.core.unfed(group) {
                // Back (or replaced): loads begun before now are not kept, then it caches.
                self.core.drop_group(group);
                self.core.set_unfed(group, false);
                tracing::info!(group = %group, "feed: the group's triggers are in place; it caches again");
            }
            metrics::gauge!("geecache_feed_triggers_missing", "group" => group.name())
                .set(missing.len() as f64);
            g.seen = Some(now);
        }
        Ok(())
    }
}

/// Marks the feed followed, before the node serves: from then on, feed-backed groups cache
/// nothing until the first poll, and are not answered as fresh past `max_staleness` without
/// one. True when some group is feed-backed.
pub fn enable(core: &Core) -> bool {
    if !core.groups().all().any(Group::feed_backed) {
        return false;
    }
    core.feed().enable(clock::now_ms());
    true
}

/// Follows the feed for the node's life, reconnecting as needed (after [`enable`]).
pub async fn follow(core: Arc<Core>, settings: FeedSettings) {
    let groups: BTreeMap<&'static str, Group> = core
        .groups()
        .all()
        .filter(|g| g.feed_backed())
        .map(|g| (g.name(), g))
        .collect();
    if groups.is_empty() {
        return;
    }
    let triggers: Vec<GroupTriggers> = groups
        .values()
        .filter_map(|&group| match feed_db::group_entries(group) {
            Ok(entries) => Some(GroupTriggers {
                group,
                entries,
                seen: None,
            }),
            Err(e) => {
                tracing::error!(error = %e, "feed: cannot check the group's triggers");
                None
            }
        })
        .collect();
    let entries: Vec<feed_db::EntryObjects> = triggers
        .iter()
        .flat_map(|g: &GroupTriggers| g.entries.clone())
        .collect();
    let present_args = feed_db::present_args(&entries);
    let mut f = Follower {
        core,
        settings,
        groups,
        prev: None,
        last_record: Instant::now() - RECORD_EVERY,
        recorded: false,
        triggers,
        present_args,
        last_trigger_check: None,
    };
    let mut first = true;
    loop {
        let cause = session(&mut f, first).await;
        first = false;
        metrics::counter!("geecache_feed_replays_total", "cause" => cause).increment(1);
        tracing::warn!(
            cause,
            "feed: connection lost; reconnecting (the next poll replays what was missed)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One connection's life: poll every `poll_every`; returns why it ended.
async fn session(f: &mut Follower, first: bool) -> &'static str {
    let mut pg: tokio_postgres::Config = match f.settings.database_url.parse() {
        Ok(pg) => pg,
        Err(_) => return "bad_url",
    };
    pg.application_name("geecache-feed");
    pg.connect_timeout(f.settings.connect_timeout);
    let (client, connection) = match pg.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => {
            if first {
                tracing::warn!(error = %e, "feed: cannot connect yet");
            }
            return "connect";
        }
    };
    let mut conn = actix_rt::spawn(connection);
    let mut tick = tokio::time::interval(f.settings.poll_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prepared = None;
    let cause = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut conn => break "connection_closed",
        }
        if tokio::time::timeout(POLL_TIMEOUT, f.record(&client))
            .await
            .is_err()
        {
            break "record_timeout";
        }
        match tokio::time::timeout(POLL_TIMEOUT, f.check_triggers(&client)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break "poll_failed",
            Err(_) => break "poll_timeout",
        }
        match tokio::time::timeout(POLL_TIMEOUT, f.poll(&client, &mut prepared)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                tracing::error!(
                    "feed: not installed in this database (geecache db feed install); values of feed-backed groups are not answered as fresh"
                );
                tokio::time::sleep(Duration::from_secs(5)).await;
                break "not_installed";
            }
            Ok(Err(_)) => break "poll_failed",
            Err(_) => break "poll_timeout",
        }
    };
    conn.abort();
    cause
}

/// `geecache db feed status`: the consumers, and what the table holds.
pub const STATUS_SQL: &str = "SELECT c.consumer, c.position::text, \
    extract(epoch FROM now() - c.updated)::float8, \
    (SELECT count(*) FROM geecache.changes)::int8, \
    (SELECT extract(epoch FROM now() - min(at)) FROM geecache.changes)::float8, \
    (SELECT pruned_below::text FROM geecache.feed_state) \
    FROM geecache.consumers c ORDER BY c.consumer";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse_as_postgresql_prints_them() {
        assert_eq!(
            Snapshot::parse("10:20:12,15"),
            Some(Snapshot {
                xmin: 10,
                xmax: 20,
                xip: vec![12, 15]
            })
        );
        let idle = Snapshot::parse("752:752:").unwrap();
        assert_eq!((idle.xip.len(), idle.oldest_unseen()), (0, 752));
        assert_eq!(Snapshot::parse("10:20:12,15").unwrap().oldest_unseen(), 12);
        assert_eq!(Snapshot::parse("garbage"), None);
    }

    #[test]
    fn the_poll_reads_one_page() {
        assert!(POLL.contains(&format!("LIMIT {}", PAGE_ROWS + 1)));
        assert!(POLL.contains(&format!(
            "octet_length(key) <= {}",
            crate::group::MAX_KEY_BYTES
        )));
    }
}
