//! Hit ratio of the hot-body cache policy under a Zipf-distributed replay, at several cache sizes:
//! moka (TinyLFU admission + LRU eviction, what segd uses) against a plain LRU of the same
//! capacity (the `lru` crate), plus a "scan" variant where a one-off sweep over cold objects is
//! interleaved with the hot traffic — the case TinyLFU admission exists for.
//! A second table does the same for the pull cache's index: byte-weighted (objects of 32 KiB to
//! 1 MiB, capacity in bytes, moka's weigher as `store/pull.rs` sets it) against an LRU evicting
//! by bytes, with byte hit ratios too (what the upstream is spared).
//! A third table mixes whole files (20-120 MiB, one object in 100) into that catalogue: moka's
//! admission weighs a candidate against the summed frequencies of all the victims it would
//! displace, so a large object could in principle be kept out for good; the table shows whether
//! it is (TinyLFU, moka with its LRU policy, a plain LRU).
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

/// Size of object `k` in bytes: 32 KiB to 1 MiB, fixed per object (segments of several bitrates).
fn size_of(k: u64) -> u64 {
    let mut x = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995;
    x ^= x >> 29;
    (32 << 10) + (x % 31) * (32 << 10)
}

/// Hit ratios of one replay: objects, bytes, and the whole files' bytes alone (NaN without any).
#[derive(Default)]
struct Tally {
    hits: u64,
    requests: u64,
    hit_bytes: u64,
    bytes: u64,
    whole_hit_bytes: u64,
    whole_bytes: u64,
}

impl Tally {
    fn count(&mut self, k: u64, len: u64, hit: bool) {
        self.requests += 1;
        self.bytes += len;
        let whole = is_whole_file(k);
        if whole {
            self.whole_bytes += len;
        }
        if hit {
            self.hits += 1;
            self.hit_bytes += len;
            if whole {
                self.whole_hit_bytes += len;
            }
        }
    }

    /// (object hit ratio, byte hit ratio, whole files' byte hit ratio)
    fn ratios(&self) -> (f64, f64, f64) {
        (
            self.hits as f64 / self.requests as f64,
            self.hit_bytes as f64 / self.bytes as f64,
            self.whole_hit_bytes as f64 / self.whole_bytes as f64,
        )
    }
}

/// A byte-weighted moka cache of `cap` bytes, configured as the pull cache's index is (weigher:
/// object bytes + a 256-byte sidecar), with eviction `policy`.
fn moka_weighted(
    trace: &[u64],
    cap: u64,
    size_of: fn(u64) -> u64,
    policy: moka::policy::EvictionPolicy,
) -> (f64, f64, f64) {
    let c: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder()
        .max_capacity(cap)
        .eviction_policy(policy)
        .weigher(|_k: &u64, v: &u64| u32::try_from(*v + 256).unwrap_or(u32::MAX))
        .build();
    let mut t = Tally::default();
    for (i, k) in trace.iter().enumerate() {
        let len = size_of(*k);
        let hit = c.get(k).is_some();
        if !hit {
            c.insert(*k, len);
        }
        t.count(*k, len, hit);
        if i % 1024 == 0 {
            c.run_pending_tasks();
        }
    }
    t.ratios()
}

/// The same for an LRU that evicts least recently used objects until the bytes fit.
fn lru_weighted(trace: &[u64], cap: u64, size_of: fn(u64) -> u64) -> (f64, f64, f64) {
    let mut c = lru::LruCache::unbounded();
    let mut held = 0u64;
    let mut t = Tally::default();
    for k in trace {
        let len = size_of(*k);
        let hit = c.get(k).is_some();
        t.count(*k, len, hit);
        if hit {
            continue;
        }
        c.put(*k, len);
        held += len + 256;
        while held > cap {
            match c.pop_lru() {
                Some((_, l)) => held -= l + 256,
                None => break,
            }
        }
    }
    t.ratios()
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

    let bytes: u64 = (0..n as u64).map(size_of).sum();
    println!(
        "\nPull cache index (byte-weighted): catalogue {n} objects, {} MiB; object / byte hit ratio\n",
        bytes >> 20
    );
    println!("| workload | cache size (% of catalogue bytes) | moka objects | LRU objects | moka bytes | LRU bytes |");
    println!("|---|---|---|---|---|---|");
    for (name, s, scan) in [
        ("zipf s=0.9", 0.9, false),
        ("zipf s=0.9 + cold scan", 0.9, true),
    ] {
        let t = trace(n, len, s, scan);
        for pct in [5u64, 10, 20] {
            let cap = bytes * pct / 100;
            let (m, mb, _) =
                moka_weighted(&t, cap, size_of, moka::policy::EvictionPolicy::tiny_lfu());
            let (l, lb, _) = lru_weighted(&t, cap, size_of);
            println!("| {name} | {pct}% | {m:.3} | {l:.3} | {mb:.3} | {lb:.3} |");
        }
    }

    let bytes: u64 = (0..n as u64).map(mixed_size_of).sum();
    println!(
        "\nThe same with whole files in the catalogue (one object in 100 is 20-120 MiB: podcasts, DJ mixes): catalogue {} MiB; byte hit ratio, of all bytes and of the whole files' bytes\n",
        bytes >> 20
    );
    println!("| workload | cache size (% of catalogue bytes) | moka TinyLFU | moka LRU | plain LRU | whole files: TinyLFU | moka LRU | plain LRU |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, s, scan) in [
        ("zipf s=0.9", 0.9, false),
        ("zipf s=0.9 + cold scan", 0.9, true),
    ] {
        let t = trace(n, len, s, scan);
        for pct in [5u64, 10, 20] {
            let cap = bytes * pct / 100;
            let tiny_lfu = moka::policy::EvictionPolicy::tiny_lfu();
            let (_, tb, tw) = moka_weighted(&t, cap, mixed_size_of, tiny_lfu);
            let moka_lru = moka::policy::EvictionPolicy::lru();
            let (_, mb, mw) = moka_weighted(&t, cap, mixed_size_of, moka_lru);
            let (_, lb, lw) = lru_weighted(&t, cap, mixed_size_of);
            println!(
                "| {name} | {pct}% | {tb:.3} | {mb:.3} | {lb:.3} | {tw:.3} | {mw:.3} | {lw:.3} |"
            );
        }
    }
}

/// One object in 100 is a whole file of 20-120 MiB; the rest are segments as in `size_of`.
fn is_whole_file(k: u64) -> bool {
    k % 100 == 7
}

fn mixed_size_of(k: u64) -> u64 {
    if is_whole_file(k) {
        (20 << 20) + (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % (100 << 20)
    } else {
        size_of(k)
    }
}
