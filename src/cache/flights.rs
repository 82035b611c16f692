//! The in-flight table of singleflight, as plain data: key -> waiters.
//!
//! `LoaderActor` owns one of these. Keeping it free of actix lets the tests force every
//! interleaving: join while a flight is open, finish with waiters that went away, and so on.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;

/// What `join` decided for a caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// No flight was open for the key: the caller must start the load.
    Leader,
    /// A flight is open: the caller waits for its result.
    Follower,
}

/// Refused because `max_flights` distinct keys are already loading; the waiter comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyFlights<W>(pub W);

#[derive(Debug)]
pub struct Flights<K, W> {
    open: HashMap<K, Vec<W>>,
    max_flights: usize,
}

impl<K: Hash + Eq, W> Flights<K, W> {
    pub fn new(max_flights: usize) -> Self {
        Flights {
            open: HashMap::new(),
            max_flights,
        }
    }

    /// Adds `waiter` to the flight for `key`, opening the flight when there is none.
    pub fn join(&mut self, key: K, waiter: W) -> Result<Joined, TooManyFlights<W>> {
        // One hash of the key either way (it is hashed again only when the flight lands).
        let full = self.open.len() >= self.max_flights;
        match self.open.entry(key) {
            Entry::Occupied(mut open) => {
                open.get_mut().push(waiter);
                Ok(Joined::Follower)
            }
            Entry::Vacant(_) if full => Err(TooManyFlights(waiter)),
            Entry::Vacant(slot) => {
                slot.insert(vec![waiter]);
                Ok(Joined::Leader)
            }
        }
    }

    /// Closes the flight for `key` and hands back everyone who waited on it.
    pub fn finish(&mut self, key: &K) -> Vec<W> {
        self.open.remove(key).unwrap_or_default()
    }

    pub fn in_flight(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_leads_later_follow_and_finish_returns_all() {
        let mut f = Flights::new(10);
        assert_eq!(f.join("a", 1), Ok(Joined::Leader));
        assert_eq!(f.join("a", 2), Ok(Joined::Follower));
        assert_eq!(f.join("b", 3), Ok(Joined::Leader));
        assert_eq!(f.join("a", 4), Ok(Joined::Follower));
        assert_eq!(f.in_flight(), 2);
        assert_eq!(f.finish(&"a"), vec![1, 2, 4]);
        assert_eq!(f.in_flight(), 1);
        // After a flight closes, the next caller leads a new one (nothing is remembered).
        assert_eq!(f.join("a", 5), Ok(Joined::Leader));
    }

    #[test]
    fn finishing_an_unknown_key_is_harmless() {
        let mut f: Flights<&str, u8> = Flights::new(1);
        assert!(f.finish(&"x").is_empty());
    }

    #[test]
    fn distinct_flights_are_bounded_but_followers_are_not_refused() {
        let mut f = Flights::new(1);
        assert_eq!(f.join("a", 1), Ok(Joined::Leader));
        assert_eq!(f.join("b", 2), Err(TooManyFlights(2)));
        assert_eq!(f.join("a", 3), Ok(Joined::Follower));
    }
}
