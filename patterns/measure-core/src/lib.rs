//! In-path measurement logic: what the `measure` filter records and how it names it.
//!
//! No I/O and no clock of its own: callers pass clock readings in nanoseconds, so the same code
//! runs in a proxy-wasm filter, in tests, and in a simulator.
#![no_std]

use core::fmt::{self, Write};

/// HTTP status class used as a metric tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    /// No valid status (the stream was reset before a response, or the code is out of range).
    Other,
}

impl StatusClass {
    pub fn of(code: u32) -> StatusClass {
        match code {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            _ => StatusClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Other => "other",
        }
    }
}

/// A route label chosen by path prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixRoute<'a> {
    pub name: &'a str,
    pub prefix: &'a str,
}

/// The label of the longest matching prefix, or `fallback`. Query strings are ignored.
pub fn route_for_path<'a>(routes: &[PrefixRoute<'a>], path: &str, fallback: &'a str) -> &'a str {
    let path = path.split(['?', '#']).next().unwrap_or("");
    routes.iter().filter(|r| path.starts_with(r.prefix)).max_by_key(|r| r.prefix.len()).map_or(fallback, |r| r.name)
}

/// Separator between a metric's base name and each tag, and between a tag's key and value.
///
/// A metric named `base;.;route=.=api;.;class=.=2xx` is the metric `base` with tags
/// `route="api"` and `class="2xx"`. meshwork's host splits names this way; in Envoy, one
/// `stats_tags` entry per key with regex `(;\.;route=\.=([^;]*))` does the same.
pub const TAG_SEPARATOR: &str = ";.;";
pub const TAG_ASSIGN: &str = "=.=";

/// Writes `base` followed by `tags` in the tag convention above. Tag values are sanitised:
/// anything outside `[A-Za-z0-9_.:/-]` becomes `_`, so a value can never forge a separator.
pub fn write_metric_name<W: Write>(out: &mut W, base: &str, tags: &[(&str, &str)]) -> fmt::Result {
    out.write_str(base)?;
    for (key, value) in tags {
        out.write_str(TAG_SEPARATOR)?;
        out.write_str(key)?;
        out.write_str(TAG_ASSIGN)?;
        for c in value.chars() {
            let keep = c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-');
            out.write_char(if keep { c } else { '_' })?;
        }
    }
    Ok(())
}

/// Clock readings of one stream, in nanoseconds of any one clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamTimes {
    /// Request headers arrived at the filter.
    pub request_start: Option<u64>,
    /// The request was released towards the upstream (headers continued).
    pub upstream_sent: Option<u64>,
    /// Response headers arrived at the filter.
    pub response_start: Option<u64>,
}

impl StreamTimes {
    /// Time from releasing the request to its response headers: the upstream's share.
    pub fn upstream_latency_ns(&self) -> Option<u64> {
        Some(self.response_start?.saturating_sub(self.upstream_sent?))
    }

    /// Time from request headers to response headers as this filter saw it.
    pub fn total_ns(&self) -> Option<u64> {
        Some(self.response_start?.saturating_sub(self.request_start?))
    }
}

/// Writes a `Server-Timing` header value (W3C Server Timing) for the upstream and the whole
/// hop as seen by the filter, in milliseconds with microsecond precision.
pub fn write_server_timing<W: Write>(out: &mut W, times: &StreamTimes) -> fmt::Result {
    let mut first = true;
    let mut entry = |out: &mut W, name: &str, ns: u64| -> fmt::Result {
        if !first {
            out.write_str(", ")?;
        }
        first = false;
        out.write_str(name)?;
        out.write_str(";dur=")?;
        write_millis(out, ns)
    };
    if let Some(ns) = times.upstream_latency_ns() {
        entry(out, "upstream", ns)?;
    }
    if let Some(ns) = times.total_ns() {
        entry(out, "total", ns)?;
    }
    Ok(())
}

/// Writes nanoseconds as milliseconds with three decimals ("12.345"), without `core::fmt`'s
/// machinery: this runs on every response.
fn write_millis<W: Write>(out: &mut W, ns: u64) -> fmt::Result {
    let micros = ns / 1_000;
    let (mut whole, frac) = (micros / 1_000, micros % 1_000);
    let mut buf = [0u8; 24];
    let mut at = buf.len() - 4;
    buf[at..].copy_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
    loop {
        at -= 1;
        buf[at] = b'0' + (whole % 10) as u8;
        whole /= 10;
        if whole == 0 {
            break;
        }
    }
    out.write_str(core::str::from_utf8(&buf[at..]).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::string::String;

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(200).as_str(), "2xx");
        assert_eq!(StatusClass::of(429).as_str(), "4xx");
        assert_eq!(StatusClass::of(503).as_str(), "5xx");
        assert_eq!(StatusClass::of(0).as_str(), "other");
        assert_eq!(StatusClass::of(600).as_str(), "other");
    }

    #[test]
    fn longest_prefix_wins_and_query_is_ignored() {
        let routes = [PrefixRoute { name: "api", prefix: "/api/" }, PrefixRoute { name: "api-v2", prefix: "/api/v2/" }];
        assert_eq!(route_for_path(&routes, "/api/v2/users?x=1", "other"), "api-v2");
        assert_eq!(route_for_path(&routes, "/api/v1", "other"), "api");
        assert_eq!(route_for_path(&routes, "/static/api/", "other"), "other");
        assert_eq!(route_for_path(&routes, "/x?/api/", "other"), "other");
    }

    #[test]
    fn metric_names_carry_sanitised_tags() {
        let mut s = String::new();
        write_metric_name(&mut s, "reqs", &[("route", "a;.;b=.=c"), ("class", "2xx")]).unwrap();
        assert_eq!(s, "reqs;.;route=.=a_._b_._c;.;class=.=2xx");
    }

    #[test]
    fn millis_edge_cases() {
        for (ns, want) in [
            (0, "0.000"),
            (999, "0.000"),
            (1_000, "0.001"),
            (999_999, "0.999"),
            (1_000_000, "1.000"),
            (u64::MAX, "18446744073709.551"),
        ] {
            let mut s = String::new();
            write_millis(&mut s, ns).unwrap();
            assert_eq!(s, want);
        }
    }

    #[test]
    fn server_timing_format() {
        let t =
            StreamTimes { request_start: Some(1_000), upstream_sent: Some(51_000), response_start: Some(12_345_678) };
        let mut s = String::new();
        write_server_timing(&mut s, &t).unwrap();
        assert_eq!(s, "upstream;dur=12.294, total;dur=12.344");
        let mut empty = String::new();
        write_server_timing(&mut empty, &StreamTimes::default()).unwrap();
        assert_eq!(empty, "");
    }

    proptest! {
        #[test]
        fn millis_match_the_formatter(ns in prop_oneof![0u64..10_000_000, 0u64..u64::MAX]) {
            let mut fast = String::new();
            write_millis(&mut fast, ns).unwrap();
            prop_assert_eq!(fast, std::format!("{}.{:03}", ns / 1_000_000, (ns / 1_000) % 1_000));
        }

        #[test]
        fn latency_never_underflows(a in any::<u64>(), b in any::<u64>(), c in any::<u64>()) {
            let t = StreamTimes { request_start: Some(a), upstream_sent: Some(b), response_start: Some(c) };
            prop_assert_eq!(t.upstream_latency_ns(), Some(c.saturating_sub(b)));
            prop_assert!(t.total_ns().is_some());
        }

        #[test]
        fn sanitised_values_never_contain_separators(v in ".*") {
            let mut s = String::new();
            write_metric_name(&mut s, "m", &[("k", &v)]).unwrap();
            let tag = &s["m;.;k=.=".len()..];
            prop_assert!(!tag.contains(';') && !tag.contains('='));
        }
    }
}
