//! Key distributions. The i-th key of a run is a pure function of (seed, i), so that a trace
//! can be replayed exactly (`geeload replay`) without storing it.

use anyhow::{Context, bail};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

#[derive(Debug, Clone)]
pub enum Keys {
    /// Ids 1..=n, each equally likely.
    Uniform { n: u64 },
    /// Ids 1..=n by rank, P(rank k) ∝ 1/k^s.
    Zipf { n: u64, dist: Zipf<f64> },
    /// One key, always.
    Hot(String),
    /// Every request a key not asked before: start, start+1, ...
    Miss { start: u64 },
}

impl Keys {
    /// `uniform:N`, `zipf:S:N`, `hot:KEY`, `miss:START`.
    pub fn parse(spec: &str) -> anyhow::Result<Keys> {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let number = |s: &str| -> anyhow::Result<u64> {
            s.replace('_', "")
                .parse()
                .with_context(|| format!("{s:?} in key spec {spec:?} is not a number"))
        };
        Ok(match kind {
            "uniform" => Keys::Uniform { n: number(rest)? },
            "zipf" => {
                let (s, n) = rest
                    .split_once(':')
                    .with_context(|| format!("expected zipf:S:N, got {spec:?}"))?;
                let s: f64 = s.parse().with_context(|| format!("bad exponent {s:?}"))?;
                let n = number(n)?;
                if n == 0 || s < 0.0 {
                    bail!("zipf needs N >= 1 and S >= 0");
                }
                Keys::Zipf {
                    n,
                    dist: Zipf::new(n as f64, s)?,
                }
            }
            "hot" if !rest.is_empty() => Keys::Hot(rest.to_owned()),
            "miss" => Keys::Miss {
                start: if rest.is_empty() { 1 } else { number(rest)? },
            },
            _ => bail!("unknown key spec {spec:?} (uniform:N, zipf:S:N, hot:KEY, miss:START)"),
        })
    }

    /// The i-th key of the trace with this seed.
    pub fn key(&self, seed: u64, i: u64) -> String {
        match self {
            Keys::Hot(k) => k.clone(),
            Keys::Miss { start } => (start + i).to_string(),
            Keys::Uniform { n } => rng(seed, i).random_range(1..=*n).to_string(),
            Keys::Zipf { n, dist } => (dist.sample(&mut rng(seed, i)) as u64)
                .clamp(1, *n)
                .to_string(),
        }
    }

    /// The ids this distribution draws from, when it is a finite set of products.
    pub fn universe(&self) -> Option<u64> {
        match self {
            Keys::Uniform { n } | Keys::Zipf { n, .. } => Some(*n),
            _ => None,
        }
    }
}

fn rng(seed: u64, i: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_reproducible_and_seed_dependent() {
        let k = Keys::parse("zipf:0.99:1000").unwrap();
        let a: Vec<_> = (0..100).map(|i| k.key(7, i)).collect();
        let b: Vec<_> = (0..100).map(|i| k.key(7, i)).collect();
        let c: Vec<_> = (0..100).map(|i| k.key(8, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let k = Keys::parse("zipf:0.99:100000").unwrap();
        let n = 20_000;
        let top = (0..n)
            .filter(|&i| k.key(1, i).parse::<u64>().unwrap() <= 100)
            .count();
        // Zipf(0.99) over 1e5 keys: the top 100 ranks draw about 42 % of requests.
        let share = top as f64 / n as f64;
        assert!((0.35..0.50).contains(&share), "top-100 share {share}");
        let u = Keys::parse("uniform:100000").unwrap();
        let top = (0..n)
            .filter(|&i| u.key(1, i).parse::<u64>().unwrap() <= 100)
            .count();
        assert!(top < 100, "uniform top-100 count {top}");
    }

    #[test]
    fn specs_are_checked() {
        assert!(Keys::parse("zipf:0.99").is_err());
        assert!(Keys::parse("zipf:x:10").is_err());
        assert!(Keys::parse("hot:").is_err());
        assert!(Keys::parse("pareto:1").is_err());
        assert_eq!(Keys::parse("miss:10").unwrap().key(0, 5), "15");
        assert_eq!(Keys::parse("hot:Tom").unwrap().key(3, 9), "Tom");
        assert_eq!(Keys::parse("uniform:1_000").unwrap().universe(), Some(1000));
    }
}
