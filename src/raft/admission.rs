//! Which Raft messages from peers a member lets through to raft-rs, and which it drops: a
//! message must come from a member of this cluster, at the peer URL (and, for members named by
//! an IP, the address) the membership has for its id, and be addressed to this node. Pure; the
//! `RaftActor` applies it to every message and counts the drops by reason.

use std::net::IpAddr;

use raft::prelude::Message;

use super::membership::Membership;

/// What a batch says about its sender.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub from_url: &'a str,
    pub cluster_id: &'a str,
    /// The address the batch came from.
    pub from_ip: Option<IpAddr>,
}

/// The IP literal of a base URL's host, if it is one (`http://10.0.1.5:8001`, `http://[::1]:8001`).
pub fn url_ip(url: &str) -> Option<std::net::IpAddr> {
    let host = url.split_once("://")?.1;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host.parse().ok()
}

/// Why a message from a peer is dropped before raft-rs sees it (the metric's label).
pub fn inadmissible(
    m: &Message,
    me: u64,
    ours: &Membership,
    batch: &Batch,
) -> Option<&'static str> {
    let (from_url, cluster_id) = (batch.from_url, batch.cluster_id);
    if m.to != me {
        return Some("wrong_recipient");
    }
    if !cluster_id.is_empty() && !ours.cluster_id.is_empty() && cluster_id != ours.cluster_id {
        return Some("foreign_cluster");
    }
    // A node that has not joined yet knows no members: the leader adding it is a stranger to
    // it until the snapshot arrives, and the peer secret is what vouches for it.
    if ours.members.is_empty() {
        return None;
    }
    let Some(info) = ours.members.get(&m.from) else {
        return Some("not_member");
    };
    if info.peer_url != from_url {
        return Some("url_mismatch");
    }
    // A member named by its IP (as `--self http://auto:PORT` and ECS make them) must send
    // from that IP.
    match (url_ip(&info.peer_url), batch.from_ip) {
        (Some(want), Some(got)) if want.to_canonical() != got.to_canonical() => {
            Some("address_mismatch")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::membership::MemberInfo;

    fn membership() -> Membership {
        let mut m = Membership {
            cluster_id: "ours".into(),
            ..Default::default()
        };
        for (id, url) in [(1, "http://10.0.0.1:8001"), (2, "http://node2:8001")] {
            m.add(MemberInfo {
                id,
                peer_url: url.into(),
                api_url: String::new(),
                weight: 1,
            })
            .unwrap();
        }
        m
    }

    fn msg(from: u64, to: u64) -> Message {
        Message {
            from,
            to,
            ..Default::default()
        }
    }

    fn batch<'a>(url: &'a str, cluster: &'a str, ip: Option<&str>) -> Batch<'a> {
        Batch {
            from_url: url,
            cluster_id: cluster,
            from_ip: ip.map(|i| i.parse().unwrap()),
        }
    }

    #[test]
    fn only_members_of_this_cluster_at_their_own_address_get_through() {
        let m = membership();
        let ok = batch("http://10.0.0.1:8001", "ours", Some("10.0.0.1"));
        assert_eq!(inadmissible(&msg(1, 2), 2, &m, &ok), None);
        let cases = [
            (
                msg(1, 3),
                batch("http://10.0.0.1:8001", "ours", Some("10.0.0.1")),
                "wrong_recipient",
            ),
            (
                msg(1, 2),
                batch("http://10.0.0.1:8001", "theirs", Some("10.0.0.1")),
                "foreign_cluster",
            ),
            (
                msg(99, 2),
                batch("http://10.0.0.9:8001", "ours", Some("10.0.0.9")),
                "not_member",
            ),
            (
                msg(1, 2),
                batch("http://10.0.0.9:8001", "ours", Some("10.0.0.9")),
                "url_mismatch",
            ),
            (
                msg(1, 2),
                batch("http://10.0.0.1:8001", "ours", Some("10.0.0.9")),
                "address_mismatch",
            ),
        ];
        for (m1, b, why) in cases {
            assert_eq!(inadmissible(&m1, 2, &m, &b), Some(why));
        }
        // A joiner's first answers carry no cluster id yet; a member named by DNS is checked by
        // URL only; a node that has joined nothing takes what the peer secret let through.
        assert_eq!(
            inadmissible(
                &msg(1, 2),
                2,
                &m,
                &batch("http://10.0.0.1:8001", "", Some("::ffff:10.0.0.1"))
            ),
            None
        );
        assert_eq!(
            inadmissible(
                &msg(2, 1),
                1,
                &m,
                &batch("http://node2:8001", "ours", Some("10.9.9.9"))
            ),
            None
        );
        let fresh = Membership::default();
        assert_eq!(
            inadmissible(&msg(7, 2), 2, &fresh, &batch("http://x:1", "any", None)),
            None
        );
    }

    #[test]
    fn url_ips_are_read_from_ip_literals_only() {
        assert_eq!(url_ip("http://10.0.0.1:8001"), "10.0.0.1".parse().ok());
        assert_eq!(url_ip("http://[::1]:8001"), "::1".parse().ok());
        assert_eq!(url_ip("http://node:8001"), None);
        assert_eq!(url_ip("http://10.0.0.1"), "10.0.0.1".parse().ok());
    }
}
