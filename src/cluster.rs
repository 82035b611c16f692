//! Membership as the request path sees it: the current ring, its epoch, and who "self" is.
//!
//! This is the one seam between routing and how membership is decided: static flags today;
//! whatever changes membership publishes a new ring here with `set`.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::ring::{Member, Ring, RingHash};

/// A ring and the epoch it belongs to.
#[derive(Debug)]
pub struct RingView {
    pub ring: Ring,
    pub epoch: u64,
}

/// Where a key is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node owns the key (or there is no ring: a lone node owns everything).
    Local,
    /// Another member owns it: its peer base URL.
    Remote(Arc<str>),
}

pub struct Cluster {
    self_name: Option<Arc<str>>,
    view: ArcSwap<RingView>,
}

impl Cluster {
    pub fn new(self_name: Option<&str>, ring: Ring, epoch: u64) -> Cluster {
        Cluster {
            self_name: self_name.map(Arc::from),
            view: ArcSwap::from_pointee(RingView { ring, epoch }),
        }
    }

    /// Static membership from flags: `peers`, plus this node unless it is a frontend.
    pub fn from_static(
        self_url: Option<&str>,
        peers: &[String],
        holds_shard: bool,
        hash: RingHash,
        vnodes: usize,
    ) -> Cluster {
        let mut members: Vec<Member> = peers
            .iter()
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| !p.is_empty())
            .map(Member::new)
            .collect();
        let self_url = self_url.map(|s| s.trim_end_matches('/'));
        match self_url {
            Some(me) if holds_shard => members.push(Member::new(me)),
            Some(me) => members.retain(|m| &*m.name != me),
            None => {}
        }
        Cluster::new(self_url, Ring::new(hash, vnodes, members), 0)
    }

    pub fn self_name(&self) -> Option<&str> {
        self.self_name.as_deref()
    }

    pub fn view(&self) -> Arc<RingView> {
        self.view.load_full()
    }

    pub fn set(&self, ring: Ring, epoch: u64) {
        self.view.store(Arc::new(RingView { ring, epoch }));
    }

    pub fn epoch(&self) -> u64 {
        self.view.load().epoch
    }

    pub fn route(&self, key: &str) -> Route {
        let view = self.view.load();
        match view.ring.owner(key) {
            None => Route::Local,
            Some(m) if Some(&m.name) == self.self_name.as_ref() => Route::Local,
            Some(m) => Route::Remote(Arc::clone(&m.name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_the_ring() {
        let peers = ["http://a:8001".to_string(), "http://b:8001/".to_string()];
        let a = Cluster::from_static(Some("http://a:8001"), &peers, true, RingHash::Crc32, 50);
        let b = Cluster::from_static(Some("http://b:8001"), &peers, true, RingHash::Crc32, 50);
        let mut local = 0;
        for i in 0..1000 {
            let k = i.to_string();
            match (a.route(&k), b.route(&k)) {
                (Route::Local, Route::Remote(o)) => {
                    assert_eq!(&*o, "http://a:8001");
                    local += 1;
                }
                (Route::Remote(o), Route::Local) => assert_eq!(&*o, "http://b:8001"),
                other => panic!("disagree on {k}: {other:?}"),
            }
        }
        assert!(local > 200 && local < 800);
    }

    #[test]
    fn a_lone_node_serves_everything_and_a_frontend_nothing() {
        let lone = Cluster::from_static(None, &[], true, RingHash::Crc32, 150);
        assert_eq!(lone.route("x"), Route::Local);
        let peers = ["http://a:8001".to_string()];
        let front =
            Cluster::from_static(Some("http://f:8001"), &peers, false, RingHash::Crc32, 150);
        assert_eq!(front.route("x"), Route::Remote("http://a:8001".into()));
    }
}
