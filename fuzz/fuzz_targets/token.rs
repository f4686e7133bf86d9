//! EdgeAuth v2 tokens: arbitrary text never verifies (nor panics), a token signed with the key
//! always verifies for a path its ACL covers, and changing any single byte of it makes it fail.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use segd::auth::edgeauth::{sign, Claim, Key, SignSpec, Verifier};
use segd::config::TokenAlgorithm;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    text: &'a str,
    dir: &'a str,
    exp: u32,
    flip_at: usize,
    flip_to: u8,
}

fuzz_target!(|inp: Input<'_>| {
    let key = hex::decode("52a152a152a152a152a152a152a1").expect("hex");
    let v = Verifier {
        algorithm: TokenAlgorithm::Sha256,
        keys: vec![Key { id: "k".into(), secret: key.clone(), not_before: None, not_after: None }],
        salt: None,
        leeway: 0,
        escape_early: false,
    };
    let paths = ["/vod/x/seg.ts"];
    let claim = Claim { paths: &paths, client_ip: "127.0.0.1".parse().expect("ip"), now: 1_000 };
    // Forging without the key must fail (a random text matching a 256-bit MAC is impossible).
    assert!(v.verify(inp.text, &claim).is_err(), "{:?}", inp.text);

    // Round trip: sign, verify, then any single-byte change fails.
    let dir: String = inp.dir.chars().filter(|c| c.is_ascii_alphanumeric()).take(16).collect();
    let acl = format!("/{dir}/*");
    let path = format!("/{dir}/seg.ts");
    let exp = 1_000 + u64::from(inp.exp);
    let tok = sign(TokenAlgorithm::Sha256, &key, &SignSpec { acl: Some(&acl), exp, ..Default::default() });
    let paths = [path.as_str()];
    let claim = Claim { paths: &paths, client_ip: "127.0.0.1".parse().expect("ip"), now: 1_000 };
    assert!(v.verify(&tok, &claim).is_ok(), "{tok}");
    let mut bytes = tok.clone().into_bytes();
    let i = inp.flip_at % bytes.len();
    if bytes[i] != inp.flip_to {
        bytes[i] = inp.flip_to;
        if let Ok(changed) = String::from_utf8(bytes) {
            if !changed.eq_ignore_ascii_case(&tok) {
                assert!(v.verify(&changed, &claim).is_err(), "{changed}");
            }
        }
    }
});
