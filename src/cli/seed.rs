//! `geecache db seed`: creates the tables and fills them with the embedded source's rows.
//!
//! Products are streamed with COPY in constant memory into a fresh table that replaces the old
//! one in a single transaction, so nodes reading the database never see it half filled.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::NoTls;

use crate::source::demo::{SCORES, product_value};

/// Rows per COPY chunk: large enough to amortise the sink, small enough to stay in cache.
const CHUNK_ROWS: u64 = 10_000;

#[derive(Debug)]
pub struct SeedReport {
    pub products: u64,
    pub elapsed: Duration,
}

pub async fn seed(database_url: &str, rows: u64, progress: bool) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls).await?;
    let conn = tokio::spawn(connection);

    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS scores (name text PRIMARY KEY, value text NOT NULL);
             DROP TABLE IF EXISTS products_seed;
             CREATE TABLE products_seed (id bigint NOT NULL, value text NOT NULL);",
        )
        .await?;
    for (name, value) in SCORES {
        client
            .execute(
                "INSERT INTO scores (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&name, &value],
            )
            .await?;
    }

    let bar = if progress {
        ProgressBar::new(rows).with_style(ProgressStyle::with_template(
            "{spinner} products {bar:40} {human_pos}/{human_len} ({per_sec}, eta {eta})",
        )?)
    } else {
        ProgressBar::hidden()
    };
    let sink = client
        .copy_in("COPY products_seed (id, value) FROM STDIN")
        .await?;
    futures_util::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(2 << 20);
    let mut id = 1;
    while id <= rows {
        let end = (id + CHUNK_ROWS - 1).min(rows);
        for i in id..=end {
            buf.put_slice(i.to_string().as_bytes());
            buf.put_u8(b'\t');
            buf.put_slice(product_value(i).as_bytes());
            buf.put_u8(b'\n');
        }
        sink.send(buf.split().freeze()).await?;
        bar.inc(end - id + 1);
        id = end + 1;
    }
    let copied = sink.finish().await?;
    bar.finish_and_clear();

    let tx = client.transaction().await?;
    tx.batch_execute(
        "ALTER TABLE products_seed ADD CONSTRAINT products_seed_pkey PRIMARY KEY (id);
         DROP TABLE IF EXISTS products;
         ALTER TABLE products_seed RENAME TO products;
         ALTER INDEX products_seed_pkey RENAME TO products_pkey;",
    )
    .await?;
    tx.commit().await?;
    client
        .batch_execute("ANALYZE products; ANALYZE scores;")
        .await?;
    // The fresh products table has no triggers: (re)install the feed for the demo groups.
    let feed = crate::feed::db::install_sql(crate::group::Groups::demo(), &[])
        .map_err(|e| anyhow::anyhow!(e))?;
    let tx = client.transaction().await?;
    tx.batch_execute(&feed).await?;
    tx.commit().await?;
    drop(client);
    conn.await??;
    Ok(SeedReport {
        products: copied,
        elapsed: started.elapsed(),
    })
}
