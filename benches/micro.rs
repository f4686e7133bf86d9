//! Criterion micro-benches for the pure code on every request: path sanitising, token verify,
//! Range parsing, playlist rewriting, and the open-file cache lookup.
//! Run: `cargo bench --bench micro`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use segd::auth::edgeauth::{sign, Claim, Key, SignSpec, Verifier};
use segd::config::TokenAlgorithm;

fn path_sanitize(c: &mut Criterion) {
    let mut g = c.benchmark_group("path_sanitize");
    for (name, p) in [
        ("plain", "/vod/mix123/hls/320k/seg_00042.ts"),
        ("escaped", "/vod/my%20mix/hls/320k/seg%5F00042.ts"),
        ("traversal", "/vod/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        ("long", "/vod/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/ccccccccccccccccccccc/seg.ts"),
    ] {
        g.bench_function(name, |b| b.iter(|| segd::volumes::sanitize(black_box(p))));
    }
    g.finish();
}

fn token_verify(c: &mut Criterion) {
    let key = hex::decode("52a152a152a152a152a152a152a1").expect("hex");
    let v = Verifier {
        algorithm: TokenAlgorithm::Sha256,
        keys: vec![Key::new("k1", &key, None, None)],
        salt: None,
        leeway: 10,
        escape_early: false,
        // acl_valid: the token's MAC is computed once, then remembered (as a player's or a
        // packager's token is); url_valid and bad_hmac compute it every time.
        verified: Default::default(),
    };
    let acl = sign(
        TokenAlgorithm::Sha256,
        &key,
        &SignSpec {
            acl: Some("/vod/mix123/*"),
            start: Some(1_700_000_000),
            exp: 1_800_000_000,
            ..Default::default()
        },
    );
    let url = sign(
        TokenAlgorithm::Sha256,
        &key,
        &SignSpec {
            url: Some("/vod/mix123/hls/master.m3u8"),
            exp: 1_800_000_000,
            ..Default::default()
        },
    );
    let bad = acl.replace("exp=18", "exp=19");
    let seg = ["/vod/mix123/hls/320k/seg_00042.ts"];
    let master = ["/vod/mix123/hls/master.m3u8"];
    let claim = |p: &'static [&'static str; 1]| Claim {
        paths: p,
        client_ip: "127.0.0.1".parse().expect("ip"),
        now: 1_750_000_000,
    };
    let seg: &'static [&'static str; 1] = Box::leak(Box::new(seg));
    let master: &'static [&'static str; 1] = Box::leak(Box::new(master));
    let mut g = c.benchmark_group("token_verify");
    g.bench_function("acl_valid", |b| {
        b.iter(|| v.verify(black_box(&acl), &claim(seg)))
    });
    g.bench_function("url_valid", |b| {
        b.iter(|| v.verify(black_box(&url), &claim(master)))
    });
    g.bench_function("bad_hmac", |b| {
        b.iter(|| v.verify(black_box(&bad), &claim(seg)))
    });
    g.bench_function("garbage", |b| {
        b.iter(|| v.verify(black_box("exp=1~~~~~~~acl=*~hmac=zz"), &claim(seg)))
    });
    g.finish();
}

fn range_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("range_parse");
    for (name, h) in [
        ("single", "bytes=0-1023".to_string()),
        ("suffix", "bytes=-500".to_string()),
        (
            "multi_1000",
            format!(
                "bytes={}",
                (0..1000)
                    .map(|i| format!("{}-{}", i * 10, i * 10 + 5))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        ("garbage", "bytes=abc-def".to_string()),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| segd::http::range::resolve(Some(black_box(h.as_bytes())), 200_000))
        });
    }
    g.finish();
}

fn playlist_rewrite(c: &mut Criterion) {
    let mut hls = String::from(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:5\n#EXT-X-MAP:URI=\"init.mp4\"\n",
    );
    for i in 0..720 {
        hls.push_str(&format!("#EXTINF:5.0,\nseg_{i:05}.m4s\n"));
    }
    hls.push_str("#EXT-X-ENDLIST\n");
    let mpd = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/demo/disk1/vod/t1/dash/manifest.mpd"
    ))
    .expect("demo mpd");
    let param = segd::playlist::Add::Query("__token__=st%3D1700000000~exp%3D1800000000~acl%3D%2Fvod%2Fmix123%2F*~hmac%3D921c18dc1f2e11882730b6112972cf65eef407695ed7f92dd13df8751b356a58");
    let mut g = c.benchmark_group("playlist_rewrite");
    g.bench_function("hls_720_segments", |b| {
        b.iter(|| {
            segd::playlist::rewrite(segd::playlist::Kind::Hls, black_box(hls.as_bytes()), param)
        })
    });
    g.bench_function("dash_demo_mpd", |b| {
        b.iter(|| segd::playlist::rewrite(segd::playlist::Kind::Dash, black_box(&mpd), param))
    });
    g.finish();
}

fn cache_lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = segd::cache::files::FileCache::new(10_000);
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("vod/mix{}/hls/320k/seg_{i:05}.ts", i % 7))
        .collect();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").expect("write");
    for k in &keys {
        let f = std::fs::File::open(&path).expect("open");
        let meta = segd::volumes::ObjectMeta {
            len: 1,
            dev: 1,
            ino: 1,
            mtime_ns: 0,
            ctime_ns: 0,
        };
        cache.insert(k, f, meta, 0);
    }
    let mut i = 0usize;
    let mut g = c.benchmark_group("cache_lookup");
    g.bench_function("open_file_hit", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            matches!(
                cache.get(black_box(&keys[i]), Duration::from_secs(10)),
                segd::cache::files::Lookup::Fresh(_)
            )
        })
    });
    g.bench_function("open_file_miss", |b| {
        b.iter(|| {
            matches!(
                cache.get(black_box("vod/none/x.ts"), Duration::from_secs(10)),
                segd::cache::files::Lookup::Miss
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = path_sanitize, token_verify, range_parse, playlist_rewrite, cache_lookup
}
criterion_main!(benches);
