//! Hit ratio of the hot-body cache policy under a Zipf-distributed replay, at several cache sizes:
//! moka (TinyLFU admission + LRU eviction, what segd uses) against a plain LRU of the same
//! capacity (the `lru` crate), plus a "scan" variant where a one-off sweep over cold objects is
//! interleaved with the hot traffic — the case TinyLFU admission exists for.
//! Run: `cargo bench --bench cache_hit_ratio`.

use std::num::NonZeroUsize;

/// Inverse-CDF sampler for Zipf(s) over `n` items (item 0 is the most popular).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for v in &mut cdf {
            *v /= sum;
        }
        Zipf { cdf }
    }

    fn sample(&self, u: f64) -> usize {
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn trace(n: usize, len: usize, s: f64, scan: bool) -> Vec<u64> {
    let z = Zipf::new(n, s);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(len * 2);
    let mut cold = n as u64;
    for i in 0..len {
        out.push(z.sample(rng.next_f64()) as u64);
        // One request in four during the middle half is a never-repeated cold object.
        if scan && i > len / 4 && i < 3 * len / 4 && i % 4 == 0 {
            out.push(cold);
            cold += 1;
        }
    }
    out
}

fn moka_ratio(trace: &[u64], cap: u64) -> f64 {
    let c: moka::sync::Cache<u64, ()> = moka::sync::Cache::new(cap);
    let mut hits = 0u64;
    for (i, k) in trace.iter().enumerate() {
        if c.get(k).is_some() {
            hits += 1;
        } else {
            c.insert(*k, ());
        }
        if i % 1024 == 0 {
            c.run_pending_tasks();
        }
    }
    hits as f64 / trace.len() as f64
}

fn lru_ratio(trace: &[u64], cap: u64) -> f64 {
    let mut c = lru::LruCache::new(NonZeroUsize::new(cap as usize).unwrap_or(NonZeroUsize::MIN));
    let mut hits = 0u64;
    for k in trace {
        if c.get(k).is_some() {
            hits += 1;
        } else {
            c.put(*k, ());
        }
    }
    hits as f64 / trace.len() as f64
}

fn main() {
    let n = 100_000;
    let len = 1_000_000;
    println!("Zipf replay: catalogue {n} objects, {len} requests; hit ratio (higher is better)\n");
    println!(
        "| workload | cache size (% of catalogue) | moka (TinyLFU) | plain LRU | moka - LRU |"
    );
    println!("|---|---|---|---|---|");
    for (name, s, scan) in [
        ("zipf s=0.9", 0.9, false),
        ("zipf s=1.1", 1.1, false),
        ("zipf s=0.9 + cold scan", 0.9, true),
    ] {
        let t = trace(n, len, s, scan);
        for pct in [1u64, 5, 10, 20] {
            let cap = n as u64 * pct / 100;
            let (m, l) = (moka_ratio(&t, cap), lru_ratio(&t, cap));
            println!("| {name} | {pct}% | {:.3} | {:.3} | {:+.3} |", m, l, m - l);
        }
    }
}
