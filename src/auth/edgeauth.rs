//! Akamai EdgeAuth v2 ("Auth Token 2.0") tokens: parse, verify, sign. Pure code, no I/O.
//!
//! Format: fields joined by `~`, each `name=value` split on the first `=`: optional `ip`, `st`,
//! required `exp`, `acl` (absent for a URL token), optional `id`, `data`, and last `hmac` (hex).
//! The MAC is HMAC-{SHA256,SHA1,MD5} keyed with the hex-*decoded* secret over the exact bytes of
//! the token before `~hmac=`, plus `~url=<path>` for a URL token, plus `~salt=<salt>` when a salt
//! is configured. The signed bytes are the bytes received; with `escape_early` (Akamai's "Escape
//! token inputs"), forms with the escaped fields escaped again are tried too (see
//! [`Verifier::escape_early`]).
//!
//! Verification order (so that the reported reason is true): parse (`malformed`) → MAC under any
//! active key (`bad_hmac`) → `st`/`exp` with leeway (`not_yet_valid`, `expired`) → ACL
//! (`acl_mismatch`) → `ip` (`ip_mismatch`). MACs are compared in constant time (`hmac`'s
//! `verify_slice`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};

use hmac::{Hmac, Mac};

use crate::config::TokenAlgorithm;

/// Why a token was refused (a log field and a metric label; never sent to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Malformed,
    Expired,
    NotYetValid,
    AclMismatch,
    BadHmac,
    IpMismatch,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::AclMismatch => "acl_mismatch",
            Reason::BadHmac => "bad_hmac",
            Reason::IpMismatch => "ip_mismatch",
        }
    }

    pub const ALL: [Reason; 7] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::AclMismatch,
        Reason::BadHmac,
        Reason::IpMismatch,
    ];
}

/// A parsed token, borrowing from the token text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    /// The exact bytes before `~hmac=`: what was signed (before `~url=`/`~salt=`).
    pub signed: &'a str,
    pub ip: Option<&'a str>,
    pub st: Option<u64>,
    pub exp: u64,
    pub acl: Option<&'a str>,
    pub id: Option<&'a str>,
    pub data: Option<&'a str>,
    /// The MAC as sent (hex digits, checked), decoded only where it is computed.
    pub hmac: &'a str,
}

fn unix(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a token. Any structural problem is `Malformed`.
pub fn parse(text: &str) -> Result<Token<'_>, Reason> {
    if text.len() > 8192 {
        return Err(Reason::Malformed);
    }
    // `hmac` is the last field: the last `~` starts it (a `~` after `~hmac=` is malformed
    // either way). One byte search, not a substring search built for each token.
    let pos = crate::text::rfind(text, b'~').ok_or(Reason::Malformed)?;
    if !text[pos..].starts_with("~hmac=") {
        return Err(Reason::Malformed);
    }
    let (signed, mac) = (&text[..pos], &text[pos + 6..]);
    if mac.is_empty() || mac.len() > 128 {
        return Err(Reason::Malformed);
    }
    if mac.len() % 2 != 0 || !mac.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Reason::Malformed);
    }
    let mut t = Token {
        signed,
        ip: None,
        st: None,
        exp: 0,
        acl: None,
        id: None,
        data: None,
        hmac: mac,
    };
    let mut exp = None;
    for field in crate::text::split(signed, b'~') {
        let eq = memchr::memchr(b'=', field.as_bytes()).ok_or(Reason::Malformed)?;
        let (name, value) = (&field[..eq], &field[eq + 1..]);
        let slot_str = |slot: &mut Option<&'_ str>| {
            if slot.is_some() {
                return Err(Reason::Malformed);
            }
            Ok(())
        };
        match name {
            "ip" => {
                slot_str(&mut t.ip)?;
                t.ip = Some(value);
            }
            "acl" => {
                slot_str(&mut t.acl)?;
                if value.is_empty() {
                    return Err(Reason::Malformed);
                }
                t.acl = Some(value);
            }
            "id" => {
                slot_str(&mut t.id)?;
                t.id = Some(value);
            }
            "data" => {
                slot_str(&mut t.data)?;
                t.data = Some(value);
            }
            "st" => {
                if t.st.is_some() {
                    return Err(Reason::Malformed);
                }
                t.st = Some(unix(value).ok_or(Reason::Malformed)?);
            }
            "exp" => {
                if exp.is_some() {
                    return Err(Reason::Malformed);
                }
                exp = Some(unix(value).ok_or(Reason::Malformed)?);
            }
            // `url` and `salt` are never sent in a token; a token carrying one is not one of ours.
            "url" | "salt" | "hmac" => return Err(Reason::Malformed),
            // Unknown fields are covered by the MAC, so they cannot be forged; ignore them.
            _ => {}
        }
    }
    t.exp = exp.ok_or(Reason::Malformed)?;
    Ok(t)
}

fn mac_bytes(alg: TokenAlgorithm, key: &[u8], parts: &[&str]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&str]) -> Vec<u8> {
        // HMAC takes keys of any length; an error here is impossible, but never panic on it.
        let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return Vec::new();
        };
        for p in parts {
            m.update(p.as_bytes());
        }
        m.finalize().into_bytes().to_vec()
    }
    match alg {
        TokenAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        TokenAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        TokenAlgorithm::Md5 => run::<Hmac<md5::Md5>>(key, parts),
    }
}

/// A key's HMAC state after the key is absorbed (its inner and outer pads hashed): cloned for
/// each verification instead of hashing the pads again, two of the four or five compressions a
/// short token's MAC takes.
#[derive(Clone)]
enum Keyed {
    Sha256(Hmac<sha2::Sha256>),
    Sha1(Hmac<sha1::Sha1>),
    Md5(Hmac<md5::Md5>),
}

impl Keyed {
    fn new(alg: TokenAlgorithm, key: &[u8]) -> Option<Keyed> {
        // HMAC takes keys of any length; an error here is impossible, but never panic on it.
        Some(match alg {
            TokenAlgorithm::Sha256 => Keyed::Sha256(<Hmac<_> as Mac>::new_from_slice(key).ok()?),
            TokenAlgorithm::Sha1 => Keyed::Sha1(<Hmac<_> as Mac>::new_from_slice(key).ok()?),
            TokenAlgorithm::Md5 => Keyed::Md5(<Hmac<_> as Mac>::new_from_slice(key).ok()?),
        })
    }

    /// Whether `parts`, concatenated, have the MAC `expected` (compared in constant time).
    fn verify(&self, parts: &[&str], expected: &[u8]) -> bool {
        fn run<M: Mac + Clone>(keyed: &M, parts: &[&str], expected: &[u8]) -> bool {
            let mut m = keyed.clone();
            for p in parts {
                m.update(p.as_bytes());
            }
            m.verify_slice(expected).is_ok()
        }
        match self {
            Keyed::Sha256(m) => run(m, parts, expected),
            Keyed::Sha1(m) => run(m, parts, expected),
            Keyed::Md5(m) => run(m, parts, expected),
        }
    }
}

/// Wildcard match: `*` any run (including `/` and empty), `?` exactly one character.
/// Iterative with one backtrack point: O(len(pattern) × len(text)) worst case, no recursion.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Does any `!`-separated ACL pattern match one of `paths`?
pub fn acl_matches(acl: &str, paths: &[&str]) -> bool {
    crate::text::split(acl, b'!').any(|pat| paths.iter().any(|p| wildcard(pat, p)))
}

/// Python's `quote_plus` with lower-cased escapes: what the reference generator's `escape_early`
/// does to `url`, `ip`, `id` and `data`.
pub fn escape_early(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

/// The Node generator's `escapeEarly` (npm `akamai-edgeauth`): `encodeURIComponent`, then
/// `~`, `'` and `*` escaped too, escapes lower-cased. It differs from [`escape_early`] for a
/// space (`%20`, not `+`), `~` (escaped) and `!`, `(`, `)` (kept).
pub fn escape_early_node(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'!' | b'(' | b')' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

/// A signing key as the verifier sees it.
#[derive(Clone)]
pub struct Key {
    pub id: String,
    pub secret: Vec<u8>,
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    /// The HMAC state with the secret absorbed, made at the first verification (the algorithm
    /// is the verifier's).
    keyed: OnceLock<Option<Keyed>>,
}

impl std::fmt::Debug for Key {
    // Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn new(id: &str, secret: &[u8], not_before: Option<u64>, not_after: Option<u64>) -> Key {
        Key {
            id: id.to_owned(),
            secret: secret.to_vec(),
            not_before,
            not_after,
            keyed: OnceLock::new(),
        }
    }

    pub fn active(&self, now: u64) -> bool {
        self.not_before.is_none_or(|nb| now >= nb) && self.not_after.is_none_or(|na| now <= na)
    }

    fn mac_verify(&self, alg: TokenAlgorithm, parts: &[&str], expected: &[u8]) -> bool {
        self.keyed
            .get_or_init(|| Keyed::new(alg, &self.secret))
            .as_ref()
            .is_some_and(|k| k.verify(parts, expected))
    }
}

/// ACL tokens whose MAC verified, with the key that verified it: a packager or a player sends
/// the same token with every request, and its MAC (over the token's own bytes, and the salt)
/// gives the same answer every time, so it is computed once. Only MACs that verified are kept,
/// so tokens nobody signed cannot fill it; the rest of the checks (times, ACL, address, the
/// key's window) run on every request. Bounded: emptied when full. A new configuration starts
/// a new verifier, and so an empty set.
#[derive(Default)]
pub struct Verified(Mutex<HashMap<Box<str>, usize, foldhash::fast::RandomState>>);

/// Tokens [`Verified`] holds at most.
const VERIFIED_MAX: usize = 4096;

impl Verified {
    fn get(&self, text: &str) -> Option<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(text)
            .copied()
    }

    fn insert(&self, text: &str, key: usize) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= VERIFIED_MAX {
            m.clear();
        }
        m.insert(text.into(), key);
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for Verified {
    /// A copy starts empty (it is a cache).
    fn clone(&self) -> Verified {
        Verified::default()
    }
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verified({} tokens)", self.len())
    }
}

/// What a request offers for verification.
pub struct Claim<'a> {
    /// Path forms the token may have been minted for (raw as received, decoded canonical).
    pub paths: &'a [&'a str],
    pub client_ip: IpAddr,
    pub now: u64,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key_id: String,
    pub is_url_token: bool,
    pub exp: u64,
    /// The token's start, and its `ip`, `id` and `data` as they were in it (escaped as sent):
    /// what a token derived from this one keeps ([`SignSpec::as_sent`]).
    pub st: Option<u64>,
    pub ip: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
}

fn ip_equal(token_ip: &str, client: IpAddr) -> bool {
    let decoded = crate::volumes::path::percent_decode(token_ip.replace('+', " ").as_bytes());
    let Some(text) = decoded.and_then(|d| String::from_utf8(d).ok()) else {
        return false;
    };
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    text.trim()
        .parse::<IpAddr>()
        .is_ok_and(|ip| canon(ip) == canon(client))
}

/// Verifies tokens for one configuration.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub algorithm: TokenAlgorithm,
    pub keys: Vec<Key>,
    pub salt: Option<String>,
    pub leeway: u64,
    /// Tokens are minted with early escaping (the reference generator's `escape_early=True`,
    /// Akamai's "Escape token inputs"): `ip`, `id` and `data` are signed `quote_plus`-escaped
    /// (lower-case hex), and the legacy 2.0 generators escape `acl` too. A token put in a URL
    /// is often percent-encoded only in part (a `/` made `%2F`, the `%` of `%3a` left as it
    /// is), so the location's one decoding also decodes those fields and the bytes received no
    /// longer verify. Then the fields are escaped again from their decoded text, as the CDN
    /// escapes its HMAC inputs, and those forms are verified too: each decoded `+` read as a
    /// space (what `quote_plus` makes of one) or as a plus (a `%2b` decoded), and each also
    /// with the `acl` escaped (legacy). A field holding both spaces and pluses cannot be read
    /// back after such a decoding; such a token must be sent fully percent-encoded.
    /// An ACL holding a `%` is matched percent-decoded as well (a legacy `acl=%2fvod%2f%2a` is
    /// `/vod/*`).
    pub escape_early: bool,
    /// ACL tokens whose MAC verified.
    pub verified: Verified,
}

/// Whether `name` is a field the generators escape early (`acl` only in the legacy form).
fn escaped_field(name: &str, acl: bool) -> bool {
    matches!(name, "ip" | "id" | "data") || (acl && name == "acl")
}

/// The signed text with the early-escaped fields (`ip`, `id`, `data`; `acl` too when `acl`)
/// escaped again from their decoded text; every other byte is kept. A decoded `+` was a space
/// (`quote_plus` wrote one for it) or a plus (a `%2b` the decoding undid): bit *i* of `spaces`
/// reads the `+` of the *i*-th such field that holds one as a space.
fn reescape(signed: &str, spaces: u32, acl: bool, esc: fn(&str) -> String) -> String {
    let mut out = String::with_capacity(signed.len() * 2);
    let mut with_plus = 0;
    for (i, field) in signed.split('~').enumerate() {
        if i > 0 {
            out.push('~');
        }
        match field.split_once('=') {
            Some((name, value)) if escaped_field(name, acl) => {
                out.push_str(name);
                out.push('=');
                if value.contains('+') {
                    let space = spaces & (1 << with_plus) != 0;
                    with_plus += 1;
                    if space {
                        out.push_str(&esc(&value.replace('+', " ")));
                        continue;
                    }
                }
                out.push_str(&esc(value));
            }
            _ => out.push_str(field),
        }
    }
    out
}

/// The re-escaped forms of `signed` worth a MAC (see [`Verifier::escape_early`]): for the
/// fields without and with `acl`, each reading of their `+`s, and each as the Node generator
/// escapes (at most 18 forms).
fn reescaped_forms(signed: &str) -> Vec<String> {
    let mut forms: Vec<String> = Vec::new();
    for acl in [false, true] {
        let pluses = signed
            .split('~')
            .filter_map(|f| f.split_once('='))
            .filter(|(n, v)| escaped_field(n, acl) && v.contains('+'))
            .count()
            .min(3);
        for spaces in 0..(1u32 << pluses) {
            let form = reescape(signed, spaces, acl, escape_early);
            if form != signed && !forms.contains(&form) {
                forms.push(form);
            }
        }
        // The Node generator's escaping: a space was `%20`, so a decoded `+` was a plus.
        let form = reescape(signed, 0, acl, escape_early_node);
        if form != signed && !forms.contains(&form) {
            forms.push(form);
        }
    }
    forms
}

/// An early-escaped ACL read back (`+` a space, `%XX` a byte), if it is one: it holds an
/// escape, and no `/`, `*`, `?` or `!` of its own (a generator that escapes the ACL escapes
/// those too). An ACL with a raw `/` is a path as written, whose `%2a` or `%3f` names a
/// character of a file: read back, it was a wildcard granting more than its signer meant.
fn unescaped_acl(acl: &str) -> Option<String> {
    if !acl.contains('%') || acl.contains(['/', '*', '?', '!']) {
        return None;
    }
    let bytes = crate::volumes::path::percent_decode(acl.replace('+', " ").as_bytes())?;
    String::from_utf8(bytes).ok()
}

impl Verifier {
    /// Verifies `text` for `claim`. See the module doc for the order of checks.
    pub fn verify(&self, text: &str, claim: &Claim<'_>) -> Result<Grant, Reason> {
        let t = parse(text)?;
        let is_url = t.acl.is_none();
        // An ACL token's MAC is over its own bytes (and the salt) only: verified once, known
        // (while its key is active), and not computed again.
        let known = if is_url {
            None
        } else {
            self.verified.get(text)
        };
        let key_id = match known.and_then(|i| self.keys.get(i)) {
            Some(key) if key.active(claim.now) => key.id.clone(),
            _ => self.mac_key(text, &t, claim)?,
        };
        if let Some(st) = t.st {
            if st > claim.now.saturating_add(self.leeway) {
                return Err(Reason::NotYetValid);
            }
        }
        if t.exp.saturating_add(self.leeway) < claim.now {
            return Err(Reason::Expired);
        }
        if let Some(acl) = t.acl {
            let unescaped = self.escape_early.then(|| unescaped_acl(acl)).flatten();
            if !acl_matches(acl, claim.paths)
                && !unescaped.is_some_and(|a| acl_matches(&a, claim.paths))
            {
                return Err(Reason::AclMismatch);
            }
        }
        if let Some(ip) = t.ip {
            if !ip_equal(ip, claim.client_ip) {
                return Err(Reason::IpMismatch);
            }
        }
        Ok(Grant {
            key_id,
            is_url_token: is_url,
            exp: t.exp,
            st: t.st,
            ip: t.ip.map(str::to_owned),
            id: t.id.map(str::to_owned),
            data: t.data.map(str::to_owned),
        })
    }

    /// The id of the active key whose MAC over `t` (in each form it may have been signed in)
    /// is the one it carries: remembered for an ACL token.
    fn mac_key(&self, text: &str, t: &Token<'_>, claim: &Claim<'_>) -> Result<String, Reason> {
        let is_url = t.acl.is_none();
        // The signed message: token bytes, then ~url= (URL tokens), then ~salt=.
        let mut url_forms: Vec<String> = Vec::new();
        if is_url {
            for p in claim.paths {
                for form in [p.to_string(), escape_early(p), escape_early_node(p)] {
                    if !url_forms.contains(&form) {
                        url_forms.push(form);
                    }
                }
            }
        } else {
            url_forms.push(String::new());
        }
        // The bytes received, then (escape_early) the re-escaped forms that differ from them.
        let mut signed_forms: Vec<std::borrow::Cow<'_, str>> = vec![t.signed.into()];
        if self.escape_early {
            signed_forms.extend(reescaped_forms(t.signed).into_iter().map(Into::into));
        }
        let salt = self.salt.as_deref();
        let expected = hex::decode(t.hmac).map_err(|_| Reason::Malformed)?;
        for (i, key) in (self.keys.iter().enumerate()).filter(|(_, k)| k.active(claim.now)) {
            for (signed, url) in signed_forms
                .iter()
                .flat_map(|s| url_forms.iter().map(move |u| (s, u)))
            {
                let mut parts: Vec<&str> = vec![signed];
                if is_url {
                    parts.push("~url=");
                    parts.push(url);
                }
                if let Some(s) = salt {
                    parts.push("~salt=");
                    parts.push(s);
                }
                if key.mac_verify(self.algorithm, &parts, &expected) {
                    if !is_url {
                        self.verified.insert(text, i);
                    }
                    return Ok(key.id.clone());
                }
            }
        }
        Err(Reason::BadHmac)
    }
}

/// What to put in a new token.
#[derive(Debug, Clone, Default)]
pub struct SignSpec<'a> {
    /// ACL patterns (joined with `!`); `None` makes a URL token for `url`.
    pub acl: Option<&'a str>,
    pub url: Option<&'a str>,
    pub start: Option<u64>,
    pub exp: u64,
    pub ip: Option<&'a str>,
    pub id: Option<&'a str>,
    pub data: Option<&'a str>,
    pub salt: Option<&'a str>,
    /// Escape `ip`, `id`, `data` and the signed `url` as the reference generator's
    /// `escape_early=True` does ([`escape_early`]); the ACL is kept as it is, as there.
    pub escape_early: bool,
    /// `ip`, `id` and `data` are as they were in a token already (taken from a [`Grant`]):
    /// never escaped again.
    pub as_sent: bool,
}

/// Mints a token in the reference generator's field order (ip, st, exp, acl, id, data, hmac).
pub fn sign(alg: TokenAlgorithm, key: &[u8], spec: &SignSpec<'_>) -> String {
    let esc = |v: &str| {
        if spec.escape_early {
            escape_early(v)
        } else {
            v.to_string()
        }
    };
    let field = |v: &str| if spec.as_sent { v.to_string() } else { esc(v) };
    let mut fields: Vec<String> = Vec::new();
    if let Some(ip) = spec.ip {
        fields.push(format!("ip={}", field(ip)));
    }
    if let Some(st) = spec.start {
        fields.push(format!("st={st}"));
    }
    fields.push(format!("exp={}", spec.exp));
    if let Some(acl) = spec.acl {
        fields.push(format!("acl={acl}"));
    }
    if let Some(id) = spec.id {
        fields.push(format!("id={}", field(id)));
    }
    if let Some(d) = spec.data {
        fields.push(format!("data={}", field(d)));
    }
    let token = fields.join("~");
    let mut parts: Vec<&str> = vec![&token];
    let url_field;
    if spec.acl.is_none() {
        url_field = format!("~url={}", esc(spec.url.unwrap_or("/")));
        parts.push(&url_field);
    }
    let salt_field;
    if let Some(s) = spec.salt {
        salt_field = format!("~salt={s}");
        parts.push(&salt_field);
    }
    let mac = hex::encode(mac_bytes(alg, key, &parts));
    format!("{token}~hmac={mac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "52a152a152a152a152a152a152a1";
    const WORKED: &str = "st=1700000000~exp=1700000300~acl=/audio/mix123/*~hmac=921c18dc1f2e11882730b6112972cf65eef407695ed7f92dd13df8751b356a58";

    fn verifier(alg: TokenAlgorithm, key: &str, salt: Option<&str>) -> Verifier {
        Verifier {
            algorithm: alg,
            keys: vec![Key::new("k1", &hex::decode(key).expect("hex"), None, None)],
            salt: salt.map(str::to_string),
            leeway: 10,
            escape_early: false,
            verified: Verified::default(),
        }
    }

    fn check(v: &Verifier, token: &str, path: &str, ip: &str, now: u64) -> Result<Grant, Reason> {
        // The request path as received and its decoded form, as the handler passes them.
        let decoded = String::from_utf8(
            crate::volumes::path::percent_decode(path.as_bytes()).expect("decodable"),
        )
        .expect("utf8");
        let paths = [path, decoded.as_str()];
        v.verify(
            token,
            &Claim {
                paths: &paths,
                client_ip: ip.parse().expect("ip"),
                now,
            },
        )
    }

    #[test]
    fn worked_example_from_the_issue() {
        let v = verifier(TokenAlgorithm::Sha256, KEY, None);
        let g = check(
            &v,
            WORKED,
            "/audio/mix123/128k/seg_1.m4s",
            "127.0.0.1",
            1_700_000_100,
        )
        .expect("valid");
        assert_eq!(g.key_id, "k1");
        assert!(!g.is_url_token);
    }

    /// A verified ACL token's MAC is remembered; everything else is still checked on every
    /// request, and nothing unsigned is remembered.
    #[test]
    fn a_verified_acl_token_is_remembered_and_still_checked() {
        let v = verifier(TokenAlgorithm::Sha256, KEY, None);
        let seg = "/audio/mix123/128k/seg_1.m4s";
        // Forged: a MAC of the right length that is not the token's; never remembered.
        let forged = format!("{}{}", &WORKED[..WORKED.len() - 4], "0000");
        for _ in 0..2 {
            assert_eq!(
                check(&v, &forged, seg, "127.0.0.1", 1_700_000_100),
                Err(Reason::BadHmac)
            );
        }
        assert!(v.verified.is_empty(), "a forged token was remembered");
        check(&v, WORKED, seg, "127.0.0.1", 1_700_000_100).expect("valid");
        assert_eq!(v.verified.len(), 1);
        // Remembered now: the same answers as a fresh verifier gives, for every other check.
        let fresh = verifier(TokenAlgorithm::Sha256, KEY, None);
        for (path, now) in [
            (seg, 1_700_000_100),
            ("/audio/other/seg_1.m4s", 1_700_000_100),
            (seg, 1_700_000_311),
            (seg, 1_699_999_000),
        ] {
            let got = check(&v, WORKED, path, "127.0.0.1", now);
            assert_eq!(
                got,
                check(&fresh, WORKED, path, "127.0.0.1", now),
                "{path} {now}"
            );
        }
        assert_eq!(
            check(
                &v,
                WORKED,
                "/audio/other/seg_1.m4s",
                "127.0.0.1",
                1_700_000_100
            ),
            Err(Reason::AclMismatch)
        );
        assert_eq!(
            check(&v, WORKED, seg, "127.0.0.1", 1_700_000_311),
            Err(Reason::Expired)
        );
        // A URL token's MAC covers the path: not remembered.
        let url = sign(
            TokenAlgorithm::Sha256,
            &hex::decode(KEY).expect("hex"),
            &SignSpec {
                url: Some(seg),
                exp: 1_700_000_300,
                ..Default::default()
            },
        );
        check(&v, &url, seg, "127.0.0.1", 1_700_000_100).expect("url token");
        assert_eq!(
            check(
                &v,
                &url,
                "/audio/mix123/128k/seg_2.m4s",
                "127.0.0.1",
                1_700_000_100
            ),
            Err(Reason::BadHmac)
        );
        assert_eq!(v.verified.len(), 1, "a URL token was remembered");
    }

    /// The remembered tokens are bounded however many valid ones arrive.
    #[test]
    fn remembered_tokens_are_bounded() {
        let v = verifier(TokenAlgorithm::Sha256, KEY, None);
        let key = hex::decode(KEY).expect("hex");
        for exp in 0..(VERIFIED_MAX as u64 + 10) {
            let t = sign(
                TokenAlgorithm::Sha256,
                &key,
                &SignSpec {
                    acl: Some("/*"),
                    exp: 2_000_000_000 + exp,
                    ..Default::default()
                },
            );
            check(&v, &t, "/a.ts", "127.0.0.1", 1_700_000_000).expect("valid");
            assert!(v.verified.len() <= VERIFIED_MAX);
        }
        assert!(!v.verified.is_empty());
    }

    /// Vectors minted by Akamai's reference generator (tests/fixtures/edgeauth/make_vectors.py).
    #[test]
    fn reference_generator_vectors() {
        let text = include_str!("../../tests/fixtures/edgeauth/vectors.tsv");
        let mut n = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let c: Vec<&str> = line.split('\t').collect();
            assert_eq!(c.len(), 10, "{line}");
            let alg = match c[1] {
                "sha256" => TokenAlgorithm::Sha256,
                "sha1" => TokenAlgorithm::Sha1,
                _ => TokenAlgorithm::Md5,
            };
            let salt = (c[3] != "-").then_some(c[3]);
            let mut v = verifier(alg, c[2], salt);
            v.escape_early = c[4] == "1";
            let got = check(&v, c[5], c[6], c[7], c[8].parse().expect("now"));
            let got = match got {
                Ok(_) => "ok",
                Err(r) => r.as_str(),
            };
            assert_eq!(got, c[9], "vector {}", c[0]);
            n += 1;
        }
        assert!(n >= 42, "{n} vectors");
    }

    #[test]
    fn malformed_tokens() {
        for t in [
            "",
            "exp=1",
            "hmac=00",
            "exp=1~hmac=zz",
            "exp=abc~acl=/*~hmac=00",
            "acl=/*~hmac=00",
            "exp=1~exp=2~acl=/*~hmac=00",
            "exp=1~acl=/*~acl=/x~hmac=00",
            "exp=1~noequals~hmac=00",
            "exp=1~acl=~hmac=00",
            "exp=1~acl=/*~hmac=00~x=1",
            "exp=1~acl=/*~hmac=00~hmac=00",
            "exp=1~acl=/*~hmac=",
            "exp=1~acl=/*~hmacx=00",
            "~hmac=00",
            "exp=1~acl=/*~url=/x~hmac=00",
            "exp=-5~acl=/*~hmac=00",
            "exp=99999999999999999999999~acl=/*~hmac=00",
        ] {
            assert_eq!(parse(t).err(), Some(Reason::Malformed), "{t:?}");
        }
        // Split on the first '=' only: values may contain '='.
        let t = parse("exp=5~data=a=b~acl=/*~hmac=00").expect("ok");
        assert_eq!(t.data, Some("a=b"));
        assert_eq!(t.signed, "exp=5~data=a=b~acl=/*");
    }

    /// Tokens minted by the Node generator (npm `akamai-edgeauth` 0.2.0, key `KEY`,
    /// `startTime` 1900000000, `endTime` 1900000060, `escapeEarly: true`), whose escaping
    /// differs from the Python generator's for a space, `~`, `!`, `(`, `)` and `'`: a URL token
    /// for `/vod/t1/my mix/a (1)!~'.ts`, and an ACL token with `sessionId: "x!y(z)"` and
    /// `payload: "a b/c"`, also as a location's one decoding leaves it when the token was
    /// percent-encoded only in part (the payload's `%20` and `%2f` decoded).
    #[test]
    fn node_generator_escape_early_tokens() {
        let mut v = verifier(TokenAlgorithm::Sha256, KEY, None);
        v.escape_early = true;
        let now = 1_900_000_010;
        let url = "st=1900000000~exp=1900000060~hmac=4cad8db8e200cfd499f03cc869476f1a5d4b9e689eed274c79013fd0e64aee3f";
        assert!(check(&v, url, "/vod/t1/my mix/a (1)!~'.ts", "127.0.0.1", now).is_ok());
        assert_eq!(
            check(&v, url, "/vod/t1/my mix/a (2)!~'.ts", "127.0.0.1", now),
            Err(Reason::BadHmac)
        );
        let mac = "82621757df8553e0faad0f6cb4597b15c80573f13b544fbebef5651b69666b81";
        let sent = format!(
            "st=1900000000~exp=1900000060~acl=/vod/t1/*~id=x!y(z)~data=a%20b%2fc~hmac={mac}"
        );
        let decoded = sent.replace("a%20b%2fc", "a b/c");
        for t in [&sent, &decoded] {
            assert!(
                check(&v, t, "/vod/t1/a.ts", "127.0.0.1", now).is_ok(),
                "{t}"
            );
        }
        let changed = decoded.replace("a b/c", "a b/d");
        assert_eq!(
            check(&v, &changed, "/vod/t1/a.ts", "127.0.0.1", now),
            Err(Reason::BadHmac)
        );
        assert_eq!(
            escape_early_node("a b~'*!()é/"),
            "a%20b%7e%27%2a!()%c3%a9%2f"
        );
    }

    /// An ACL is read back from early escaping only when it is escaped whole (the legacy
    /// generators'): in a path written out, `%2a` and `%3f` are characters of a file name, not
    /// wildcards.
    #[test]
    fn only_a_wholly_escaped_acl_is_read_back() {
        assert_eq!(
            unescaped_acl("%2fvod%2ft1%2f%2a").as_deref(),
            Some("/vod/t1/*")
        );
        assert_eq!(unescaped_acl("/vod/t1/*"), None);
        assert_eq!(unescaped_acl("/vod/odd/p%3fain.ts"), None);
        assert_eq!(unescaped_acl("/vod/odd/star%2a.ts"), None);
        assert_eq!(unescaped_acl("%2fa%2f%2a!%2fb%2f%2a"), None);
        let mut v = verifier(TokenAlgorithm::Sha256, KEY, None);
        v.escape_early = true;
        let spec = |acl| SignSpec {
            acl: Some(acl),
            exp: 1_900_000_060,
            ..Default::default()
        };
        let key = hex::decode(KEY).expect("hex");
        let literal = sign(TokenAlgorithm::Sha256, &key, &spec("/vod/odd/p%3fain.ts"));
        let now = 1_900_000_000;
        let ok = |t: &str, p: &str| check(&v, t, p, "127.0.0.1", now);
        assert!(ok(&literal, "/vod/odd/p%3fain.ts").is_ok());
        assert_eq!(ok(&literal, "/vod/odd/plain.ts"), Err(Reason::AclMismatch));
        let legacy = sign(TokenAlgorithm::Sha256, &key, &spec("%2fvod%2fodd%2f%2a"));
        assert!(ok(&legacy, "/vod/odd/plain.ts").is_ok());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("/vod/*", "/vod/t1/a.ts"));
        assert!(wildcard("/vod/*", "/vod/"));
        assert!(!wildcard("/vod/*", "/vodx/a.ts"));
        assert!(wildcard("/vod/t?/*.ts", "/vod/t1/x/y.ts"));
        assert!(!wildcard("/vod/t?/*.ts", "/vod/t12/x.ts"));
        assert!(wildcard("*", ""));
        assert!(wildcard("/a/*/b/*/c", "/a/x/y/b/z/c"));
        assert!(!wildcard("/a/*/b/*/c", "/a/x/y/b/z/d"));
        assert!(acl_matches("/x/*!/vod/t2/*", &["/vod/t2/a.ts"]));
        // Pathological pattern stays fast (no exponential backtracking).
        let pat = "*a".repeat(50);
        let text = "a".repeat(5000) + "b";
        assert!(!wildcard(&pat, &text));
    }

    #[test]
    fn key_windows_and_rotation() {
        let mut v = verifier(TokenAlgorithm::Sha256, KEY, None);
        let new_key = hex::decode("00112233445566778899aabbccddeeff").expect("hex");
        v.keys.push(Key::new("k2", &new_key, Some(100), None));
        v.keys[0].not_after = Some(200);
        let t2 = sign(
            TokenAlgorithm::Sha256,
            &new_key,
            &SignSpec {
                acl: Some("/*"),
                exp: 1000,
                ..Default::default()
            },
        );
        let paths = ["/a.ts"];
        let claim = |now| Claim {
            paths: &paths,
            client_ip: "127.0.0.1".parse().expect("ip"),
            now,
        };
        assert_eq!(v.verify(&t2, &claim(150)).expect("k2").key_id, "k2");
        assert_eq!(
            v.verify(&t2, &claim(50)).err(),
            Some(Reason::BadHmac),
            "k2 not yet active"
        );
        let t1 = sign(
            TokenAlgorithm::Sha256,
            &v.keys[0].secret,
            &SignSpec {
                acl: Some("/*"),
                exp: 1000,
                ..Default::default()
            },
        );
        assert_eq!(v.verify(&t1, &claim(150)).expect("k1").key_id, "k1");
        assert_eq!(
            v.verify(&t1, &claim(250)).err(),
            Some(Reason::BadHmac),
            "k1 retired"
        );
    }

    proptest! {
        #[test]
        fn random_tokens_never_panic(s in "\\PC{0,200}") {
            let v = verifier(TokenAlgorithm::Sha256, KEY, None);
            let paths = ["/a"];
            let _ = v.verify(&s, &Claim { paths: &paths, client_ip: "127.0.0.1".parse().expect("ip"), now: 5 });
        }

        #[test]
        fn tilde_fields_never_panic(fields in proptest::collection::vec("(ip|st|exp|acl|id|data|hmac|x)=[-a-z0-9/*!%.]{0,12}", 0..8)) {
            let _ = parse(&fields.join("~"));
        }

        /// sign ∘ verify round-trips, and any single-byte change of the token fails.
        #[test]
        fn sign_verify_roundtrip(acl in "/[a-z0-9]{1,8}/\\*", exp in 1_000u64..2_000_000_000, salt in proptest::option::of("[a-z]{1,8}"), idx in any::<usize>(), byte in any::<u8>()) {
            let mut v = verifier(TokenAlgorithm::Sha256, KEY, salt.as_deref());
            v.leeway = 0;
            let key = hex::decode(KEY).expect("hex");
            let tok = sign(TokenAlgorithm::Sha256, &key, &SignSpec { acl: Some(&acl), exp, salt: salt.as_deref(), ..Default::default() });
            let path = acl.trim_end_matches('*').to_string() + "seg.ts";
            let paths = [path.as_str()];
            let claim = Claim { paths: &paths, client_ip: "127.0.0.1".parse().expect("ip"), now: exp };
            prop_assert!(v.verify(&tok, &claim).is_ok());
            let mut bytes = tok.clone().into_bytes();
            let i = idx % bytes.len();
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            if let Ok(changed) = String::from_utf8(bytes) {
                // Hex case is not significant in the MAC field.
                prop_assume!(!changed.eq_ignore_ascii_case(&tok));
                prop_assert!(v.verify(&changed, &claim).is_err(), "{changed}");
            }
        }
    }
}
