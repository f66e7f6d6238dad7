//! Header maps as proxy-wasm filters see them, and the ABI's serialized pairs format.
//!
//! A map holds HTTP/2-style pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`,
//! `:status`) in front of the regular headers, which stay in an `http::HeaderMap` so the proxy
//! moves them in and out of hyper without copying. Keys are lower-case, as in Envoy.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

/// Why a header operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// A name that is not a valid header name.
    InvalidName,
    /// A value with bytes HTTP forbids (CR, LF, NUL): refused so no filter can split a message.
    InvalidValue,
    /// The map would exceed its entry limit.
    TooMany,
}

/// Most entries a map may hold, the same cap Envoy puts on pairs it parses from a guest;
/// a filter adding more is misbehaving (its hostcall fails with BadArgument).
pub const MAX_ENTRIES: usize = 1024;

#[derive(Clone, Debug, Default)]
pub struct HeaderMap {
    pseudo: Vec<(Bytes, Bytes)>,
    regular: http::HeaderMap,
}

impl HeaderMap {
    pub fn new() -> HeaderMap {
        HeaderMap::default()
    }

    pub fn from_parts(pseudo: Vec<(Bytes, Bytes)>, regular: http::HeaderMap) -> HeaderMap {
        HeaderMap { pseudo, regular }
    }

    pub fn regular(&self) -> &http::HeaderMap {
        &self.regular
    }

    pub fn regular_mut(&mut self) -> &mut http::HeaderMap {
        &mut self.regular
    }

    pub fn into_regular(self) -> http::HeaderMap {
        self.regular
    }

    /// Number of entries, pseudo-headers included (what `num_headers` reports to callbacks).
    pub fn len(&self) -> usize {
        self.pseudo.len() + self.regular.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of key and value lengths (Envoy's `byteSize`, which `proxy_get_header_map_size` returns).
    pub fn byte_size(&self) -> usize {
        self.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pseudo
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .chain(self.regular.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())))
    }

    /// The first value of `key` (case-insensitive), as Envoy returns it.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        if key.first() == Some(&b':') {
            // Stored names are lower-case: an exact match is the common, cheap case.
            let found = self.pseudo.iter().find(|(k, _)| k.as_ref() == key);
            let found = found.or_else(|| self.pseudo.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)));
            return found.map(|(_, v)| v.as_ref());
        }
        let name = HeaderName::from_bytes(key).ok()?;
        self.regular.get(name).map(HeaderValue::as_bytes)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key.as_bytes()).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), HeaderError> {
        if self.len() >= MAX_ENTRIES {
            return Err(HeaderError::TooMany);
        }
        if key.first() == Some(&b':') {
            let value = checked_value(value)?;
            self.pseudo.push((Bytes::from(key.to_ascii_lowercase()), Bytes::copy_from_slice(value.as_bytes())));
            return Ok(());
        }
        let name = HeaderName::from_bytes(key).map_err(|_| HeaderError::InvalidName)?;
        self.regular.append(name, checked_value(value)?);
        Ok(())
    }

    /// Removes every entry of `key` and adds one with `value` (Envoy's `setCopy`).
    pub fn replace(&mut self, key: &[u8], value: &[u8]) -> Result<(), HeaderError> {
        if key.first() == Some(&b':') {
            let value = checked_value(value)?;
            self.remove(key);
            self.pseudo.push((Bytes::from(key.to_ascii_lowercase()), Bytes::copy_from_slice(value.as_bytes())));
            return Ok(());
        }
        let name = HeaderName::from_bytes(key).map_err(|_| HeaderError::InvalidName)?;
        let value = checked_value(value)?;
        if !self.regular.contains_key(&name) && self.len() >= MAX_ENTRIES {
            return Err(HeaderError::TooMany);
        }
        self.regular.insert(name, value);
        Ok(())
    }

    /// Removes every entry of `key`; removing an absent key is fine.
    pub fn remove(&mut self, key: &[u8]) {
        if key.first() == Some(&b':') {
            self.pseudo.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        } else if let Ok(name) = HeaderName::from_bytes(key) {
            self.regular.remove(name);
        }
    }

    pub fn clear(&mut self) {
        self.pseudo.clear();
        self.regular.clear();
    }

    /// Serialized in the proxy-wasm pairs format.
    pub fn to_pairs(&self) -> Vec<u8> {
        encode_pairs(&self.iter().collect::<Vec<_>>())
    }

    /// Replaces the whole map from serialized pairs, stopping at the first invalid entry.
    pub fn set_from_pairs(&mut self, pairs: &[(&[u8], &[u8])]) -> Result<(), HeaderError> {
        self.clear();
        for (k, v) in pairs {
            self.add(k, v)?;
        }
        Ok(())
    }
}

fn checked_value(value: &[u8]) -> Result<HeaderValue, HeaderError> {
    // HeaderValue accepts obs-text but rejects control characters other than tab.
    HeaderValue::from_bytes(value).map_err(|_| HeaderError::InvalidValue)
}

/// Envoy's limits on pairs parsed from a guest (`PROXY_WASM_HOST_PAIRS_MAX_*`).
pub const PAIRS_MAX_BYTES: usize = 1 << 20;
pub const PAIRS_MAX_COUNT: usize = 1024;

/// `u32 count, count × (u32 key_len, u32 value_len), then each key\0value\0`; empty map → empty.
pub fn encode_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    if pairs.is_empty() {
        return Vec::new();
    }
    let size = 4 + pairs.iter().map(|(k, v)| 8 + k.len() + v.len() + 2).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses serialized pairs. `None` for anything malformed or over Envoy's limits; Envoy treats
/// that as an empty map, and callers decide what to do with it.
pub fn decode_pairs(data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if data.is_empty() {
        return Some(Vec::new());
    }
    if data.len() > PAIRS_MAX_BYTES || data.len() < 4 {
        return None;
    }
    let count = u32::from_le_bytes(data[..4].try_into().ok()?) as usize;
    if count > PAIRS_MAX_COUNT {
        return None;
    }
    let lengths_end = 4usize.checked_add(count.checked_mul(8)?)?;
    let lengths = data.get(4..lengths_end)?;
    let mut pos = lengths_end;
    let mut out = Vec::with_capacity(count);
    for entry in lengths.chunks_exact(8) {
        let klen = u32::from_le_bytes(entry[..4].try_into().ok()?) as usize;
        let vlen = u32::from_le_bytes(entry[4..].try_into().ok()?) as usize;
        let key = data.get(pos..pos.checked_add(klen)?)?;
        pos += klen;
        if data.get(pos) != Some(&0) {
            return None;
        }
        pos += 1;
        let value = data.get(pos..pos.checked_add(vlen)?)?;
        pos += vlen;
        if data.get(pos) != Some(&0) {
            return None;
        }
        pos += 1;
        out.push((key, value));
    }
    (pos == data.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> HeaderMap {
        let mut m = HeaderMap::new();
        m.add(b":method", b"GET").unwrap();
        m.add(b":path", b"/a?b").unwrap();
        m.add(b"X-One", b"1").unwrap();
        m.add(b"x-one", b"2").unwrap();
        m
    }

    #[test]
    fn get_is_case_insensitive_and_returns_first_value() {
        let m = map();
        assert_eq!(m.get(b"x-ONE"), Some(&b"1"[..]));
        assert_eq!(m.get(b":PATH"), Some(&b"/a?b"[..]));
        assert_eq!(m.get(b"absent"), None);
        assert_eq!(m.len(), 4);
        assert_eq!(m.byte_size(), 7 + 3 + 5 + 4 + 5 + 1 + 5 + 1);
    }

    #[test]
    fn replace_removes_all_then_adds() {
        let mut m = map();
        m.replace(b"x-one", b"3").unwrap();
        let all: Vec<_> = m.regular().get_all("x-one").iter().collect();
        assert_eq!(all, vec!["3"]);
        m.replace(b"x-new", b"n").unwrap();
        assert_eq!(m.get(b"x-new"), Some(&b"n"[..]));
        m.remove(b"x-new");
        m.remove(b"never-there");
        assert_eq!(m.get(b"x-new"), None);
    }

    #[test]
    fn refuses_header_injection() {
        let mut m = HeaderMap::new();
        assert_eq!(m.add(b"x", b"a\r\nInjected: 1"), Err(HeaderError::InvalidValue));
        assert_eq!(m.add(b"bad name", b"v"), Err(HeaderError::InvalidName));
        assert_eq!(m.add(b":path", b"/\0"), Err(HeaderError::InvalidValue));
    }

    #[test]
    fn pairs_round_trip_in_order() {
        let m = map();
        let bytes = m.to_pairs();
        let pairs = decode_pairs(&bytes).unwrap();
        assert_eq!(
            pairs,
            vec![
                (&b":method"[..], &b"GET"[..]),
                (&b":path"[..], &b"/a?b"[..]),
                (&b"x-one"[..], &b"1"[..]),
                (&b"x-one"[..], &b"2"[..]),
            ]
        );
    }

    #[test]
    fn spec_example_encoding() {
        let bytes = encode_pairs(&[(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"22"[..])]);
        assert_eq!(
            bytes,
            [2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'1', 0, b'b', 0, b'2', b'2', 0]
        );
    }

    #[test]
    fn malformed_pairs_are_rejected() {
        let good = encode_pairs(&[(&b"k"[..], &b"v"[..])]);
        assert!(decode_pairs(&good).is_some());
        assert!(decode_pairs(&good[..good.len() - 1]).is_none()); // truncated
        let mut trailing = good.clone();
        trailing.push(7);
        assert!(decode_pairs(&trailing).is_none());
        let mut no_nul = good.clone();
        let n = no_nul.len();
        no_nul[n - 3] = b'x'; // the NUL after the key
        assert!(decode_pairs(&no_nul).is_none());
        assert!(decode_pairs(&[1, 0, 0]).is_none());
        assert!(decode_pairs(&(2000u32).to_le_bytes()).is_none());
        assert_eq!(decode_pairs(&[]), Some(vec![]));
    }
}
