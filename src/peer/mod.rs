//! The peer protocol: its wire (messages, paths, headers) and the one client nodes use to talk
//! to each other. The server side is `http::peer` and `http::membership`.

pub mod client;
pub mod wire;

pub use client::{BATCH_IN_FLIGHT, Changed, PeerAnswer, PeerClient, PeerError, PeerSettings};
