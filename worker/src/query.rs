//! Reading the request target from the raw URL string.
//!
//! The URL crosses from JS once, as a string, and is taken apart here without a URL
//! library or further calls into JS: the path, and the few query parameters a route
//! knows. Values are percent-decoded only when they contain an escape, so the usual
//! request borrows everything and allocates nothing.

use std::borrow::Cow;

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query parameter {0:?} is not valid percent-encoded UTF-8")]
    Encoding(String),
    #[error("query parameter {0:?} is given more than once")]
    Repeated(&'static str),
}

/// The path and query of an absolute URL (`scheme://authority/path?query#fragment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub path: &'a str,
    pub query: &'a str,
}

impl<'a> Target<'a> {
    pub fn parse(url: &'a str) -> Self {
        let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
        let rest = match after_scheme.find(['/', '?', '#']) {
            Some(i) => &after_scheme[i..],
            None => "",
        };
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        Self { path: if path.is_empty() { "/" } else { path }, query }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes and `+` (a space in form encoding). `None` on a broken escape
/// or invalid UTF-8.
pub fn decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Picks the parameters named in `keys` out of a query string, decoded. Unknown
/// parameters are ignored (cache busters, tracking tags); a known one given twice is
/// an error, because which of the two was meant is a guess.
pub fn params<'a, const N: usize>(
    query: &'a str,
    keys: [&'static str; N],
) -> Result<[Option<Cow<'a, str>>; N], QueryError> {
    let mut found: [Option<Cow<'a, str>>; N] = std::array::from_fn(|_| None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key).ok_or_else(|| QueryError::Encoding(raw_key.to_owned()))?;
        let Some(slot) = keys.iter().position(|k| *k == key) else { continue };
        if found[slot].is_some() {
            return Err(QueryError::Repeated(keys[slot]));
        }
        found[slot] = Some(decode(raw_value).ok_or(QueryError::Encoding(keys[slot].to_owned()))?);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test;

    use super::*;

    #[wasm_bindgen_test]
    fn splits_targets() {
        let t = Target::parse("https://edge.example/v1/ad?placement=home&x=1#frag");
        assert_eq!(t, Target { path: "/v1/ad", query: "placement=home&x=1" });
        assert_eq!(Target::parse("http://127.0.0.1:8787").path, "/");
        assert_eq!(Target::parse("http://h?a=1"), Target { path: "/", query: "a=1" });
        assert_eq!(Target::parse("http://h/healthz"), Target { path: "/healthz", query: "" });
        assert_eq!(Target::parse("http://h/p#x?y").query, "");
    }

    #[wasm_bindgen_test]
    fn decodes_escapes() {
        assert_eq!(decode("plain").as_deref(), Some("plain"));
        assert_eq!(decode("a%2Db+c").as_deref(), Some("a-b c"));
        assert_eq!(decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode("%"), None);
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%ff"), None);
    }

    #[wasm_bindgen_test]
    fn picks_known_params() {
        let [p, c] = params("x=1&placement=home&country=de&&z", ["placement", "country"]).unwrap();
        assert_eq!(p.as_deref(), Some("home"));
        assert_eq!(c.as_deref(), Some("de"));
        let [p] = params("", ["placement"]).unwrap();
        assert_eq!(p, None);
        let [p] = params("placement", ["placement"]).unwrap();
        assert_eq!(p.as_deref(), Some(""));
        assert_eq!(params("placement=a&placement=b", ["placement"]), Err(QueryError::Repeated("placement")));
        assert!(matches!(params("placement=%G0", ["placement"]), Err(QueryError::Encoding(_))));
        // An encoded key still counts.
        let [p] = params("plac%65ment=a", ["placement"]).unwrap();
        assert_eq!(p.as_deref(), Some("a"));
    }
}
