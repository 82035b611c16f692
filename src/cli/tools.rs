//! The operators' tools: `geecache cluster status|purge`, `geecache secret init`,
//! `geecache health`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use super::SecretArgs;
use crate::peer::wire::RAFT_COMMAND;
use crate::peer::{Changed, PeerClient, PeerSettings};

fn base_url(addr: &str) -> String {
    let addr = addr.trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// A node's `/cluster` view.
async fn cluster_view(addr: &str) -> anyhow::Result<Value> {
    let url = format!("{}/cluster", base_url(addr));
    let res = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    Ok(res.error_for_status()?.json().await?)
}

/// `geecache cluster status`: a node's view of the cluster as a table.
pub async fn cluster_status(addr: &str) -> anyhow::Result<()> {
    let v = cluster_view(addr).await?;
    let show = |k: &str| match &v[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "node {}  role {}  membership {}  leader {}  term {}  epoch {}",
        show("node_id"),
        show("role"),
        show("membership"),
        show("leader_id"),
        show("term"),
        show("epoch")
    );
    println!(
        "{:<20} {:<28} {:<28} {:<8} STATE",
        "ID", "PEER", "API", "ROLE"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let s = |k: &str| match &m[k] {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!(
            "{:<20} {:<28} {:<28} {:<8} {}",
            s("id"),
            s("peer_url"),
            s("api_url"),
            s("role"),
            s("state"),
        );
    }
    Ok(())
}

/// The secret a tool sends, from the flag, the variable or the file.
fn secret(args: &SecretArgs) -> anyhow::Result<Option<String>> {
    match (&args.peer_secret, &args.peer_secret_file) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the peer secret file {}", path.display()))?;
            Ok(text.lines().next().map(|l| l.trim().to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// `geecache cluster purge GROUP`: a committed purge, sent to the leader of the cluster that
/// the node at `addr` belongs to.
pub async fn cluster_purge(group: &str, addr: &str, auth: &SecretArgs) -> anyhow::Result<()> {
    let view = cluster_view(addr).await?;
    let peers: Vec<String> = view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["peer_url"].as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(
        !peers.is_empty(),
        "{addr} lists no members: is it a node or frontend of a Raft cluster?"
    );
    let client = PeerClient::new(&PeerSettings {
        timeout: Duration::from_secs(5),
        secret: secret(auth)?,
        max_value_bytes: 1 << 20,
    })?;
    let body = serde_json::json!({ "purge_group": group });
    let mut last = String::new();
    for peer in &peers {
        match client.change(peer, RAFT_COMMAND, &body, "").await {
            Changed::Applied(v) => {
                println!(
                    "purged {group}: every node misses on its keys from epoch {}",
                    v["epoch"]
                );
                return Ok(());
            }
            Changed::Failed(0, _) => last = format!("{peer} did not answer"),
            Changed::Failed(status, v) => {
                anyhow::bail!(
                    "{peer} answered {status}: {}",
                    v["message"].as_str().unwrap_or(&v.to_string())
                );
            }
            Changed::Foreign(why) => anyhow::bail!(why),
        }
    }
    anyhow::bail!("no member accepted the purge: {last}")
}

/// Writes a new random peer secret (32 random bytes as hex, mode 0600) to `path` unless it
/// exists; true when it wrote one.
pub fn init_secret(path: &Path) -> anyhow::Result<bool> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if path.exists() {
        return Ok(false);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the secret: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| writeln!(f, "{hex}"))
        .with_context(|| format!("cannot write the peer secret to {}", path.display()))?;
    Ok(true)
}

/// `geecache health`: true when `url` answers 2xx within 2 s.
pub async fn healthy(url: &str) -> bool {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}
