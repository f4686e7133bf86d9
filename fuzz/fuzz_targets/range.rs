//! Range: a partial answer always lies inside the object; 416 only for a syntactically valid
//! single range; never a panic, whatever the bytes and length.
#![no_main]
use libfuzzer_sys::fuzz_target;
use segd::http::range::{resolve, RangeDecision};

fuzz_target!(|inp: (&[u8], u64)| {
    let (header, len) = inp;
    match resolve(Some(header), len) {
        RangeDecision::Partial { start, end } => assert!(start <= end && end < len, "{start}-{end}/{len}"),
        RangeDecision::Unsatisfiable => {
            let text = std::str::from_utf8(header).expect("416 only for text");
            assert!(!text.contains(','), "multi-range is never 416: {text:?}");
        }
        RangeDecision::Full => {}
    }
});
