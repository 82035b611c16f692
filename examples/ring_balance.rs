//! Prints the ring's balance (max/mean keys per node) and the fraction of keys that move when a
//! node joins, for crc32 (GeeCache-compatible) and xxh3, at 50 and 150 vnodes.
//!
//! `cargo run --release --example ring_balance`

use geecache::ring::{Member, Ring, RingHash};

const KEYS: usize = 100_000;

fn names(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| {
            Member::new(&format!(
                "http://10.0.{}.{}:8001",
                1 + i / 200,
                100 + i % 200
            ))
        })
        .collect()
}

fn keys() -> Vec<String> {
    (1..=KEYS)
        .map(|i| {
            std::env::var("KEYFMT")
                .map(|f| format!("{f}{i}"))
                .unwrap_or(i.to_string())
        })
        .collect()
}

fn balance(ring: &Ring, keys: &[String]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for k in keys {
        *counts
            .entry(ring.owner(k).unwrap().name.clone())
            .or_insert(0usize) += 1;
    }
    let max = counts.values().copied().max().unwrap_or(0) as f64;
    max / (keys.len() as f64 / ring.members().len() as f64)
}

fn moved(before: &Ring, after: &Ring, keys: &[String]) -> (f64, bool) {
    let new = &after.members().last().unwrap().name;
    let mut moved = 0;
    let mut only_to_new = true;
    for k in keys {
        let (a, b) = (before.owner(k).unwrap(), after.owner(k).unwrap());
        if a != b {
            moved += 1;
            only_to_new &= &b.name == new;
        }
    }
    (moved as f64 / keys.len() as f64, only_to_new)
}

fn main() {
    let keys = keys();
    println!("balance: max/mean keys per node over {KEYS} keys (product ids 1..{KEYS})");
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "nodes",
        "crc32/50",
        "crc32/150",
        "xxh3/50",
        "xxh3/150",
        "xxh3/500",
        "crc32/1000",
        "xxh3/1000"
    );
    for n in 3..=12 {
        let row: Vec<String> = [
            (RingHash::Crc32, 50),
            (RingHash::Crc32, 150),
            (RingHash::Xxh3, 50),
            (RingHash::Xxh3, 150),
            (RingHash::Xxh3, 500),
            (RingHash::Crc32, 1000),
            (RingHash::Xxh3, 1000),
        ]
        .iter()
        .map(|&(h, v)| format!("{:>10.3}", balance(&Ring::new(h, v, names(n)), &keys)))
        .collect();
        println!("{n:>6} {}", row.join(" "));
    }
    println!(
        "\nmoved fraction when one node joins (ideal 1/(N+1)); keys move only to the new node?"
    );
    for (from, to) in [(3, 4), (11, 12)] {
        for hash in [RingHash::Crc32, RingHash::Xxh3] {
            for vnodes in [50, 150] {
                // The joining node sorts last by name, so `last()` is it.
                let before = Ring::new(hash, vnodes, names(from));
                let after = Ring::new(hash, vnodes, names(to));
                let (f, only) = moved(&before, &after, &keys);
                println!(
                    "{from:>2} -> {to:<2} {hash:?}/{vnodes:<4} moved {f:.4} (ideal {:.4}) only to the new node: {only}",
                    1.0 / to as f64
                );
            }
        }
    }
}
