//! Playlist rewriting only ever inserts the token parameter: removing every inserted
//! `?P`, `&P` and `&amp;P` from the output gives back the input exactly, for HLS and DASH.
#![no_main]
use libfuzzer_sys::fuzz_target;
use segd::playlist::{rewrite, Kind};

const P: &str = "__token__=FUZZMARK";

fuzz_target!(|inp: (bool, &str)| {
    let (dash, body) = inp;
    if body.contains("FUZZMARK") {
        return;
    }
    let kind = if dash { Kind::Dash } else { Kind::Hls };
    let out = String::from_utf8(rewrite(kind, body.as_bytes(), P)).expect("utf8 in, utf8 out");
    let restored = out
        .replace(&format!("&amp;{P}"), "")
        .replace(&format!("&{P}"), "")
        .replace(&format!("?{P}"), "");
    assert_eq!(restored, body);
});
