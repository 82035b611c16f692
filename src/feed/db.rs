//! The change feed's side in the database: its schema, the triggers that write it, and who may
//! do what (`geecache db feed install | uninstall | status`).
//!
//! **Who may do what.** One role installs (the *installer*: it owns the `geecache` schema and
//! every function in it, and has the `TRIGGER` privilege on the tables, or owns them). The
//! trigger functions are `SECURITY DEFINER` with a pinned `search_path`: an application that
//! writes the tables needs its table rights and nothing of the feed's, and the rows of
//! `geecache.changes` are written with the installer's rights. `PUBLIC` has no right on the
//! schema, so no other role can write (or wedge) the feed. The nodes' role is granted, by
//! `install --grant ROLE`, what a node does: read the feed, and record its position and prune
//! through two `SECURITY DEFINER` functions.
//!
//! **Installs compose.** Every trigger is registered with its group in `geecache.triggers`. An
//! install makes the triggers of the groups of its config exactly its `invalidate` entries and
//! touches no trigger of another group; an uninstall removes those of its config's groups. So
//! two services with groups of their own can share one database: the group name is the scope
//! (the feed's rows name their group, and a node reads only its own groups' rows).
//!
//! **Names as PostgreSQL has them.** A table is `name`, `schema.name`, or either part quoted
//! (`"Users"`, `app."Order Lines"`); an unquoted part with an upper-case letter is refused,
//! since PostgreSQL would fold it to another table's name.

use crate::group::table::{TableName, quote_ident, quote_literal};
use crate::group::{Group, Groups, MAX_KEY_BYTES};

/// One `invalidate` entry's objects: its trigger function and its two triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryObjects {
    pub group: &'static str,
    pub table: TableName,
    /// The SQL expression of the key over the row.
    pub key: String,
    /// `geecache.<function>()`, and the triggers `<function>_row` and `<function>_trunc` on the
    /// table (row changes; a TRUNCATE, which drops the whole group).
    pub function: String,
}

impl EntryObjects {
    pub fn row_trigger(&self) -> String {
        format!("{}_row", self.function)
    }

    pub fn truncate_trigger(&self) -> String {
        format!("{}_trunc", self.function)
    }
}

/// The objects of every `invalidate` entry of `groups`.
pub fn entries(groups: Groups) -> Result<Vec<EntryObjects>, String> {
    let mut out = Vec::new();
    for group in groups.all() {
        out.extend(group_entries(group)?);
    }
    Ok(out)
}

pub fn group_entries(group: Group) -> Result<Vec<EntryObjects>, String> {
    group
        .def()
        .invalidate
        .iter()
        .enumerate()
        .map(|(n, (table, key))| {
            Ok(EntryObjects {
                group: group.name(),
                table: TableName::parse(table).map_err(|e| format!("group {group}: {e}"))?,
                key: key.clone(),
                function: function_name(group.name(), n),
            })
        })
        .collect()
}

/// `geecache_<group>_<n>`, or for a long group name its first 32 bytes and a hash of the whole
/// (PostgreSQL cuts names at 63 bytes, and `_trunc` must fit after).
fn function_name(group: &str, n: usize) -> String {
    let plain = format!("geecache_{group}_{n}");
    if plain.len() <= 56 {
        return plain;
    }
    let hash = crc32fast::hash(group.as_bytes());
    format!("geecache_{}_{hash:08x}_{n}", &group[..32])
}

/// The schema, the bookkeeping tables and the functions the nodes call (idempotent). The
/// `REVOKE`s make the installer the only writer; `--grant` gives the nodes their part.
const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS geecache;
REVOKE ALL ON SCHEMA geecache FROM PUBLIC;
CREATE TABLE IF NOT EXISTS geecache.changes (
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    grp text NOT NULL,
    key text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS changes_xid ON geecache.changes (xid);
CREATE TABLE IF NOT EXISTS geecache.consumers (
    consumer text PRIMARY KEY,
    position xid8 NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS geecache.feed_state (
    id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    pruned_below xid8 NOT NULL DEFAULT '0'
);
INSERT INTO geecache.feed_state DEFAULT VALUES ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS geecache.triggers (
    grp text NOT NULL,
    tbl oid NOT NULL,
    tbl_name text NOT NULL,
    tgname text NOT NULL,
    fn text NOT NULL,
    stale boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tbl, tgname)
);
CREATE OR REPLACE FUNCTION geecache.prune(retention interval) RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $p$
DECLARE
    bound xid8;
    forced xid8;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('geecache.prune')) THEN
        RETURN;
    END IF;
    -- What every consumer seen in the last minute has read, and no further than what has ended.
    SELECT least(min(position), pg_snapshot_xmin(pg_current_snapshot())) INTO bound
        FROM geecache.consumers WHERE updated > now() - interval '1 minute';
    -- Past the retention, whatever the consumers (a consumer that was away drops its groups).
    SELECT max(xid) INTO forced FROM geecache.changes WHERE at < now() - retention;
    IF forced IS NOT NULL AND (bound IS NULL OR forced >= bound) THEN
        bound := (forced::text::numeric + 1)::text::xid8;
    END IF;
    IF bound IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM geecache.changes WHERE xid < bound;
    UPDATE geecache.feed_state SET pruned_below = greatest(pruned_below, bound);
    DELETE FROM geecache.consumers WHERE updated < now() - interval '1 day';
END $p$;
CREATE OR REPLACE FUNCTION geecache.record(who text, at xid8) RETURNS void LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $r$
    INSERT INTO geecache.consumers (consumer, position, updated) VALUES (who, at, now())
    ON CONFLICT (consumer) DO UPDATE SET position = EXCLUDED.position, updated = now();
$r$;
REVOKE ALL ON ALL TABLES IN SCHEMA geecache FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA geecache FROM PUBLIC;
";

/// Drops the triggers of registry rows marked stale, and the triggers of installs from before
/// the registry (`geecache_<group>_<n>_ins|upd|del`) of the groups named by the regular
/// expression `$1` (substituted); then the feed's trigger functions no trigger uses.
const CLEANUP: &str = "
DO $d$ DECLARE t record; BEGIN
  FOR t IN DELETE FROM geecache.triggers WHERE stale RETURNING tbl, tgname LOOP
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = t.tbl AND tgname = t.tgname) THEN
      EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.tbl::regclass);
    END IF;
  END LOOP;
  FOR t IN SELECT tgname, tgrelid::regclass AS rel FROM pg_trigger
      WHERE tgname ~ $1 AND NOT tgisinternal LOOP
    EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
  END LOOP;
  FOR t IN SELECT p.proname FROM pg_proc p
      WHERE p.pronamespace = 'geecache'::regnamespace AND p.prorettype = 'trigger'::regtype
      AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = p.oid) LOOP
    EXECUTE format('DROP FUNCTION geecache.%I()', t.proname);
  END LOOP;
END $d$;
";

/// The legacy-trigger pattern for `groups` (`$1` of [`CLEANUP`]), as a SQL literal.
fn legacy_pattern(groups: &[&str]) -> String {
    let names: Vec<String> = groups.iter().map(|g| regex::escape(g)).collect();
    let alternatives = if names.is_empty() {
        return quote_literal("^$"); // matches no trigger
    } else {
        names.join("|")
    };
    quote_literal(&format!("^geecache_({alternatives})_[0-9]+_(ins|upd|del)$"))
}

/// Marks the registry rows of `groups` stale (an install re-marks the ones it keeps).
fn mark_stale(groups: &[&str]) -> String {
    let list: Vec<String> = groups.iter().map(|g| quote_literal(g)).collect();
    if list.is_empty() {
        return String::new();
    }
    format!(
        "UPDATE geecache.triggers SET stale = true WHERE grp IN ({});\n",
        list.join(", ")
    )
}

/// The trigger function of one entry. It runs as the installer (`SECURITY DEFINER`, so the
/// writer needs no right on the feed), with a `search_path` an application cannot put
/// objects in (functions of its own in the key expression are written schema-qualified).
/// A key longer than the cache takes is no key the cache can hold, so it is not written.
fn function_sql(e: &EntryObjects) -> String {
    let alias = quote_ident(&e.table.name);
    let key_of = |row: &str| {
        format!(
            "(SELECT ({})::text FROM (SELECT {row}.*) AS {alias})",
            e.key
        )
    };
    let lit = quote_literal(e.group);
    format!(
        "CREATE OR REPLACE FUNCTION geecache.{f}() RETURNS trigger LANGUAGE plpgsql \
         SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$ \
         DECLARE o text; n text; BEGIN \
           IF TG_OP = 'TRUNCATE' THEN \
             INSERT INTO geecache.changes (grp, key) VALUES ({lit}, ''); RETURN NULL; \
           END IF; \
           IF TG_OP <> 'INSERT' THEN o := {old}; END IF; \
           IF TG_OP <> 'DELETE' THEN n := {new}; END IF; \
           IF o IS NOT NULL AND octet_length(o) BETWEEN 1 AND {max} THEN \
             INSERT INTO geecache.changes (grp, key) VALUES ({lit}, o); \
           END IF; \
           IF n IS DISTINCT FROM o AND octet_length(n) BETWEEN 1 AND {max} THEN \
             INSERT INTO geecache.changes (grp, key) VALUES ({lit}, n); \
           END IF; \
           RETURN NULL; \
         END $f$;\n\
         REVOKE ALL ON FUNCTION geecache.{f}() FROM PUBLIC;\n",
        f = quote_ident(&e.function),
        old = key_of("OLD"),
        new = key_of("NEW"),
        max = MAX_KEY_BYTES,
    )
}

/// The DDL of `geecache db feed install` for `groups`, granting the nodes' part to `grants`.
pub fn install_sql(groups: Groups, grants: &[String]) -> Result<String, String> {
    let entries = entries(groups)?;
    let names: Vec<&str> = groups.all().map(|g| g.name()).collect();
    let mut sql = String::from(SCHEMA);
    sql.push_str(&mark_stale(&names));
    for e in &entries {
        let (table, f) = (e.table.sql(), quote_ident(&e.function));
        sql.push_str(&function_sql(e));
        for (trigger, when) in [
            (
                e.row_trigger(),
                "AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW",
            ),
            (
                e.truncate_trigger(),
                "AFTER TRUNCATE ON {t} FOR EACH STATEMENT",
            ),
        ] {
            sql.push_str(&format!(
                "CREATE OR REPLACE TRIGGER {tg} {when} EXECUTE FUNCTION geecache.{f}();\n\
                 INSERT INTO geecache.triggers (grp, tbl, tbl_name, tgname, fn) \
                 VALUES ({grp}, {tl}::regclass, {tl}, {tgl}, {fl}) \
                 ON CONFLICT (tbl, tgname) DO UPDATE SET grp = EXCLUDED.grp, \
                 tbl_name = EXCLUDED.tbl_name, fn = EXCLUDED.fn, stale = false;\n",
                tg = quote_ident(&trigger),
                when = when.replace("{t}", &table),
                grp = quote_literal(e.group),
                tl = quote_literal(&table),
                tgl = quote_literal(&trigger),
                fl = quote_literal(&e.function),
            ));
        }
    }
    sql.push_str(&CLEANUP.replace("$1", &legacy_pattern(&names)));
    for role in grants {
        sql.push_str(&grant_sql(role));
    }
    Ok(sql)
}

/// What a node's role needs of the feed: read it, record its position, prune.
fn grant_sql(role: &str) -> String {
    let r = quote_ident(role);
    format!(
        "GRANT USAGE ON SCHEMA geecache TO {r};\n\
         GRANT SELECT ON geecache.changes, geecache.feed_state, geecache.triggers TO {r};\n\
         GRANT EXECUTE ON FUNCTION geecache.record(text, xid8), geecache.prune(interval) TO {r};\n"
    )
}

/// The DDL of `geecache db feed uninstall` for `groups`: their triggers and functions; the
/// schema stays for the other groups installed in the database.
pub fn uninstall_sql(groups: Groups) -> String {
    let names: Vec<&str> = groups.all().map(|g| g.name()).collect();
    let mut sql = mark_stale(&names);
    sql.push_str(&CLEANUP.replace("$1", &legacy_pattern(&names)));
    sql
}

/// The DDL of `geecache db feed uninstall --all`: every trigger of the feed, whatever its
/// group, and the schema.
pub const UNINSTALL_ALL_SQL: &str = "
DO $d$ DECLARE t record; BEGIN
  IF to_regnamespace('geecache') IS NULL THEN
    RETURN;
  END IF;
  FOR t IN SELECT tr.tgname, tr.tgrelid::regclass AS rel FROM pg_trigger tr
      JOIN pg_proc p ON p.oid = tr.tgfoid
      WHERE p.pronamespace = 'geecache'::regnamespace AND NOT tr.tgisinternal LOOP
    EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
  END LOOP;
END $d$;
DROP SCHEMA IF EXISTS geecache CASCADE;
";

/// Every trigger whose function is the feed's: table, trigger, group, the function's owner (the
/// role whose rights it writes with), whether it fires.
pub const TRIGGERS_SQL: &str = "SELECT t.tgrelid::regclass::text, t.tgname::text, \
    coalesce(r.grp, '(not registered)'), pg_get_userbyid(p.proowner)::text, \
    t.tgenabled IN ('O', 'A') \
    FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
    LEFT JOIN geecache.triggers r ON r.tbl = t.tgrelid AND r.tgname = t.tgname \
    WHERE p.pronamespace = 'geecache'::regnamespace AND NOT t.tgisinternal \
    ORDER BY 3, 1, 2";

/// The firing triggers of `entries` present now: for each entry, the OIDs of its row and
/// truncate triggers, or `None` when either is missing or disabled. `$1` tables, `$2` trigger
/// names, each twice per entry (row, then truncate).
pub const PRESENT_SQL: &str = "SELECT e.i, t.oid::int8 \
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS e(tbl, tg, i) \
    LEFT JOIN pg_trigger t ON t.tgrelid = to_regclass(e.tbl) AND t.tgname = e.tg \
        AND t.tgenabled IN ('O', 'A') \
    ORDER BY e.i";

/// The arguments of [`PRESENT_SQL`] for `entries`.
pub fn present_args(entries: &[EntryObjects]) -> (Vec<String>, Vec<String>) {
    entries
        .iter()
        .flat_map(|e| {
            [
                (e.table.sql(), e.row_trigger()),
                (e.table.sql(), e.truncate_trigger()),
            ]
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_group_names_give_distinct_names_within_postgresqls_limit() {
        let a = function_name(&format!("{}a", "g".repeat(63)), 0);
        let b = function_name(&format!("{}b", "g".repeat(63)), 0);
        assert_ne!(a, b);
        assert!(a.len() + "_trunc".len() <= 63, "{a}");
        assert_eq!(function_name("users", 2), "geecache_users_2");
    }

    #[test]
    fn legacy_triggers_are_matched_by_their_own_group_only() {
        let pattern = legacy_pattern(&["a"]);
        let re = regex::Regex::new(pattern.trim_matches('\'')).unwrap();
        assert!(re.is_match("geecache_a_0_ins"));
        assert!(!re.is_match("geecache_a_1_0_ins"), "group a_1's trigger");
        assert!(!re.is_match("geecache_b_0_ins"));
    }
}
