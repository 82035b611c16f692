//! Entry points for the fuzz targets in `fuzz/` (`scripts/fuzz.sh`): each takes arbitrary
//! bytes, runs the code that a request's or a peer's bytes reach, and panics only when an
//! invariant breaks. Not an API.

use prost::Message as _;

use crate::cli::config::Config;
use crate::group::{Groups, validate_key};
use crate::http::api::{parse_path, parse_query};
use crate::http::peer::parse_data_path;
use crate::peer::wire::{RaftBatch, Response, data_path};
use crate::raft::membership::{MemberInfo, Membership, RingCommand};
use crate::ring::{Member, Ring, RingHash};

/// A client's query string and path (`/api?...`, `/api/{group}/{key}`): parsed without a
/// panic; what parses as a valid key reaches a peer path and comes back the same.
pub fn client_request(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let groups = Groups::demo();
    for parsed in [parse_query(s, groups), parse_path(s, groups)] {
        if let Ok((group, key)) = parsed
            && validate_key(&key).is_ok()
        {
            let path = data_path(group, &key);
            let (g, k) = parse_data_path(&path, groups).expect("a peer path we wrote parses");
            assert_eq!((g, k.as_str()), (group, key.as_str()), "{path}");
        }
    }
}

/// The peer port's data path `/_geecache/{group}/{key}`.
pub fn peer_path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let groups = Groups::demo();
    let _ = parse_data_path(s, groups);
    let with_prefix = format!("/_geecache/{s}");
    if let Ok((group, key)) = parse_data_path(&with_prefix, groups)
        && validate_key(&key).is_ok()
    {
        let again = parse_data_path(&data_path(group, &key), groups).expect("round trip");
        assert_eq!(again, (group, key));
    }
}

/// An owner's answer as a caller decodes it: no panic, and what decodes re-encodes to bytes
/// that decode the same.
pub fn peer_response(data: &[u8]) {
    if let Ok(r) = Response::decode(data) {
        let again = Response::decode(&r.encode_to_vec()[..]).expect("re-encoded");
        assert_eq!(again.encode_to_vec(), r.encode_to_vec());
    }
}

/// A Raft batch as `POST /_raft/messages` decodes it, then each message as raft-rs would.
pub fn raft_batch(data: &[u8]) {
    use protobuf::Message as _;
    if let Ok(batch) = RaftBatch::decode(data) {
        for m in &batch.messages {
            let _ = raft::prelude::Message::parse_from_bytes(m);
        }
    }
}

/// A ring command (`POST /_raft/command`'s JSON, or a committed entry's protobuf) applied to a
/// three-member membership, then a member to add (JSON or protobuf), and the ring built from
/// the result: no panic, and a refused change leaves the membership as it was (a weight of
/// 2^32 - 1 must not make every node allocate a ring of 10 TB).
pub fn raft_command(data: &[u8]) {
    let mut m = three_members();
    let cmd = match crate::http::membership::command_from_json(data) {
        Ok(cmd) => Some(cmd),
        Err(_) => RingCommand::decode(data).ok(),
    };
    if let Some(cmd) = cmd {
        let before = m.clone();
        match m.apply(&cmd) {
            Ok(_) => assert!(
                m.members.values().all(|i| i.check().is_ok()),
                "applied into an invalid state"
            ),
            Err(_) => assert!(m == before, "a refused command changed the membership"),
        }
    }
    if let Ok(info) = serde_json::from_slice::<MemberInfo>(data)
        .map_or_else(|_| MemberInfo::decode(data).map_err(|_| ()), Ok)
        && m.check_add(&info).is_ok()
    {
        m.add(info).expect("checked");
    }
    let ring = Ring::new(
        RingHash::default(),
        50,
        m.members.values().map(|i| Member {
            name: i.peer_url.as_str().into(),
            weight: i.weight,
        }),
    );
    assert!(ring.members().len() <= crate::raft::membership::MAX_MEMBERS);
}

/// A config file: parsed and checked without a panic; the errors name the file.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml("fuzz.toml", text) {
        Ok(c) => {
            let _ = c.validate();
            // Checked, not built: a node builds (and leaks) its groups once.
            let _ = Groups::check(&c.groups);
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
}

fn three_members() -> Membership {
    let mut m = Membership {
        cluster_id: "fuzz".into(),
        ..Membership::default()
    };
    for id in 1..=3 {
        m.add(MemberInfo {
            id,
            peer_url: format!("http://10.0.0.{id}:8001"),
            api_url: format!("http://10.0.0.{id}:9999"),
            weight: 1,
        })
        .expect("a valid member");
    }
    m
}
