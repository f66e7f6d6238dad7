//! Descriptors from request attributes, as Envoy's route `rate_limits` actions build them.
//!
//! A [`RateLimitRule`] is a list of actions; each action appends one entry. When an action
//! cannot produce its entry (a header is absent, a header match fails) the rule produces no
//! descriptor at all, unless the action says `skip_if_absent`, which drops only that entry.
//! A request is checked against every descriptor its rules produce.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::descriptor::{Descriptor, Entry};

/// What a rule may read from the request. Implemented over proxy-wasm hostcalls in the filter
/// and over plain maps in tests.
pub trait RequestAttributes {
    /// The first value of a request header (lower-case name; pseudo-headers like `:path` too).
    fn header(&self, name: &str) -> Option<String>;
    /// The downstream peer's address, `ip`, `ip:port` or `[ipv6]:port`.
    fn remote_address(&self) -> Option<String>;
    /// The cluster the route sends this request to.
    fn destination_cluster(&self) -> Option<String>;
    /// The proxy's own service cluster (Envoy's `--service-cluster`, `node.cluster`).
    fn source_cluster(&self) -> Option<String>;
}

/// One entry of Envoy's route `rate_limits`: `{"actions": [...]}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RateLimitRule {
    pub actions: Vec<Action>,
}

/// Envoy's rate-limit actions (`config.route.v3.RateLimit.Action`), by their JSON names.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", deny_unknown_fields))]
pub enum Action {
    /// `(descriptor_key, <value of header_name>)`. Pseudo-headers work: `:path`, `:method`,
    /// `:authority`.
    RequestHeaders {
        header_name: String,
        descriptor_key: String,
        #[cfg_attr(feature = "serde", serde(default))]
        skip_if_absent: bool,
    },
    /// `("remote_address", <downstream IP>)`.
    RemoteAddress {},
    /// `(descriptor_key or "generic_key", descriptor_value)`.
    GenericKey {
        descriptor_value: String,
        #[cfg_attr(feature = "serde", serde(default = "generic_key"))]
        descriptor_key: String,
    },
    /// `(descriptor_key or "header_match", descriptor_value)` when the headers match (or do not
    /// match, with `expect_match: false`).
    HeaderValueMatch {
        descriptor_value: String,
        #[cfg_attr(feature = "serde", serde(default = "header_match"))]
        descriptor_key: String,
        #[cfg_attr(feature = "serde", serde(default = "yes"))]
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
    /// `(descriptor_key, <decoded value of the query parameter>)`.
    QueryParameters {
        query_parameter_name: String,
        descriptor_key: String,
        #[cfg_attr(feature = "serde", serde(default))]
        skip_if_absent: bool,
    },
    /// `("destination_cluster", <the route's cluster>)`.
    DestinationCluster {},
    /// `("source_cluster", <the proxy's service cluster>)`.
    SourceCluster {},
}

#[cfg(feature = "serde")]
fn generic_key() -> String {
    "generic_key".into()
}
#[cfg(feature = "serde")]
fn header_match() -> String {
    "header_match".into()
}
#[cfg(feature = "serde")]
fn yes() -> bool {
    true
}

/// Envoy's `HeaderMatcher`: a header name and exactly one way to match its value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct HeaderMatcher {
    pub name: String,
    pub exact_match: Option<String>,
    pub prefix_match: Option<String>,
    pub suffix_match: Option<String>,
    pub contains_match: Option<String>,
    pub present_match: Option<bool>,
    pub string_match: Option<StringMatcher>,
    pub invert_match: bool,
    pub treat_missing_header_as_empty: bool,
}

/// Envoy's `StringMatcher` (without `safe_regex`): exactly one of the patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct StringMatcher {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub ignore_case: bool,
}

impl StringMatcher {
    fn patterns(&self) -> usize {
        [&self.exact, &self.prefix, &self.suffix, &self.contains].iter().filter(|p| p.is_some()).count()
    }

    fn matches(&self, value: &str) -> bool {
        let fold = |s: &str| if self.ignore_case { s.to_ascii_lowercase() } else { s.to_owned() };
        let value = fold(value);
        if let Some(p) = &self.exact {
            return value == fold(p);
        }
        if let Some(p) = &self.prefix {
            return value.starts_with(&fold(p));
        }
        if let Some(p) = &self.suffix {
            return value.ends_with(&fold(p));
        }
        if let Some(p) = &self.contains {
            return value.contains(&fold(p));
        }
        false
    }
}

impl HeaderMatcher {
    fn validate(&self, path: &str) -> Result<(), String> {
        if self.name.is_empty() {
            return Err(format!("{path}.name: must not be empty"));
        }
        let ways = [self.exact_match.is_some(), self.prefix_match.is_some(), self.suffix_match.is_some()]
            .into_iter()
            .chain([self.contains_match.is_some(), self.present_match.is_some(), self.string_match.is_some()])
            .filter(|w| *w)
            .count();
        if ways != 1 {
            return Err(format!(
                "{path}: give exactly one of exact_match, prefix_match, suffix_match, contains_match, \
                 present_match, string_match (found {ways})"
            ));
        }
        if let Some(s) = &self.string_match
            && s.patterns() != 1
        {
            return Err(format!("{path}.string_match: give exactly one of exact, prefix, suffix, contains"));
        }
        Ok(())
    }

    /// Envoy's rules: an absent header matches only `present_match: false` (or, inverted,
    /// `present_match: true`), unless `treat_missing_header_as_empty`.
    pub fn matches(&self, attributes: &impl RequestAttributes) -> bool {
        let value = match attributes.header(&self.name) {
            Some(v) => v,
            None if self.treat_missing_header_as_empty => String::new(),
            None => return self.present_match == Some(self.invert_match),
        };
        let matched = if let Some(p) = &self.exact_match {
            value == *p
        } else if let Some(p) = &self.prefix_match {
            value.starts_with(p.as_str())
        } else if let Some(p) = &self.suffix_match {
            value.ends_with(p.as_str())
        } else if let Some(p) = &self.contains_match {
            value.contains(p.as_str())
        } else if let Some(present) = self.present_match {
            present
        } else if let Some(s) = &self.string_match {
            s.matches(&value)
        } else {
            false
        };
        matched != self.invert_match
    }
}

impl RateLimitRule {
    /// Checks what serde cannot: non-empty names and keys, one way to match per header
    /// matcher. `path` names the rule in messages, e.g. `rate_limits[2]`.
    pub fn validate(&self, path: &str) -> Result<(), String> {
        if self.actions.is_empty() {
            return Err(format!("{path}.actions: must not be empty"));
        }
        for (i, action) in self.actions.iter().enumerate() {
            let path = format!("{path}.actions[{i}]");
            let non_empty = |field: &str, value: &str| {
                if value.is_empty() { Err(format!("{path}.{field}: must not be empty")) } else { Ok(()) }
            };
            match action {
                Action::RequestHeaders { header_name, descriptor_key, .. } => {
                    non_empty("request_headers.header_name", header_name)?;
                    non_empty("request_headers.descriptor_key", descriptor_key)?;
                }
                Action::QueryParameters { query_parameter_name, descriptor_key, .. } => {
                    non_empty("query_parameters.query_parameter_name", query_parameter_name)?;
                    non_empty("query_parameters.descriptor_key", descriptor_key)?;
                }
                Action::GenericKey { descriptor_key, .. } => non_empty("generic_key.descriptor_key", descriptor_key)?,
                Action::HeaderValueMatch { descriptor_key, headers, .. } => {
                    non_empty("header_value_match.descriptor_key", descriptor_key)?;
                    if headers.is_empty() {
                        return Err(format!("{path}.header_value_match.headers: must not be empty"));
                    }
                    for (j, h) in headers.iter().enumerate() {
                        h.validate(&format!("{path}.header_value_match.headers[{j}]"))?;
                    }
                }
                Action::RemoteAddress {} | Action::DestinationCluster {} | Action::SourceCluster {} => {}
            }
        }
        Ok(())
    }

    /// The descriptor this rule builds for a request, or `None` when an action cannot
    /// produce its entry (Envoy then leaves the rule out of the request to the service).
    pub fn descriptor(&self, attributes: &impl RequestAttributes) -> Option<Descriptor> {
        let mut entries = Vec::with_capacity(self.actions.len());
        for action in &self.actions {
            let entry = |key: &str, value: String| Entry { key: key.to_owned(), value };
            match action {
                Action::RequestHeaders { header_name, descriptor_key, skip_if_absent } => {
                    match attributes.header(header_name) {
                        Some(value) => entries.push(entry(descriptor_key, value)),
                        None if *skip_if_absent => {}
                        None => return None,
                    }
                }
                Action::QueryParameters { query_parameter_name, descriptor_key, skip_if_absent } => {
                    let path = attributes.header(":path").unwrap_or_default();
                    match query_parameter(&path, query_parameter_name) {
                        Some(value) => entries.push(entry(descriptor_key, value)),
                        None if *skip_if_absent => {}
                        None => return None,
                    }
                }
                Action::RemoteAddress {} => {
                    entries.push(entry("remote_address", ip_of(&attributes.remote_address()?).to_owned()))
                }
                Action::GenericKey { descriptor_value, descriptor_key } => {
                    entries.push(entry(descriptor_key, descriptor_value.clone()))
                }
                Action::HeaderValueMatch { descriptor_value, descriptor_key, expect_match, headers } => {
                    let matched = headers.iter().all(|h| h.matches(attributes));
                    if matched != *expect_match {
                        return None;
                    }
                    entries.push(entry(descriptor_key, descriptor_value.clone()));
                }
                Action::DestinationCluster {} => {
                    entries.push(entry("destination_cluster", attributes.destination_cluster()?))
                }
                Action::SourceCluster {} => entries.push(entry("source_cluster", attributes.source_cluster()?)),
            }
        }
        // Every action skipped: nothing to count by.
        (!entries.is_empty()).then_some(Descriptor { entries })
    }
}

/// Every descriptor `rules` build for a request, in rule order.
pub fn descriptors(rules: &[RateLimitRule], attributes: &impl RequestAttributes) -> Vec<Descriptor> {
    rules.iter().filter_map(|r| r.descriptor(attributes)).collect()
}

/// The IP of `ip`, `ip:port`, `[ipv6]:port` or a bare IPv6 address.
pub fn ip_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        // One colon: IPv4 with a port. More: a bare IPv6 address.
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => address,
    }
}

/// The first value of query parameter `name` in a request path, percent-decoded.
pub fn query_parameter(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::string::ToString;
    use alloc::vec;

    #[derive(Default)]
    struct Req {
        headers: BTreeMap<String, String>,
        remote: Option<String>,
    }

    impl Req {
        fn with(headers: &[(&str, &str)]) -> Req {
            Req {
                headers: headers.iter().map(|(k, v)| (String::from(*k), String::from(*v))).collect(),
                remote: Some("10.1.2.3:5555".into()),
            }
        }
    }

    impl RequestAttributes for Req {
        fn header(&self, name: &str) -> Option<String> {
            self.headers.get(name).cloned()
        }
        fn remote_address(&self) -> Option<String> {
            self.remote.clone()
        }
        fn destination_cluster(&self) -> Option<String> {
            Some("app".into())
        }
        fn source_cluster(&self) -> Option<String> {
            None
        }
    }

    fn rule(json: &str) -> RateLimitRule {
        let rule: RateLimitRule = serde_json::from_str(json).unwrap();
        rule.validate("rule").unwrap();
        rule
    }

    fn entries(d: Option<Descriptor>) -> Option<Vec<(String, String)>> {
        d.map(|d| d.entries.into_iter().map(|e| (e.key, e.value)).collect())
    }

    fn pairs(p: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(p.iter().map(|(k, v)| (String::from(*k), String::from(*v))).collect())
    }

    #[test]
    fn actions_append_entries_in_order() {
        let r = rule(
            r#"{"actions": [
                {"generic_key": {"descriptor_value": "api"}},
                {"remote_address": {}},
                {"request_headers": {"header_name": ":method", "descriptor_key": "method"}},
                {"destination_cluster": {}},
                {"query_parameters": {"query_parameter_name": "tenant", "descriptor_key": "tenant"}}
            ]}"#,
        );
        let req = Req::with(&[(":method", "POST"), (":path", "/x?a=1&tenant=acme%20co")]);
        assert_eq!(
            entries(r.descriptor(&req)),
            pairs(&[
                ("generic_key", "api"),
                ("remote_address", "10.1.2.3"),
                ("method", "POST"),
                ("destination_cluster", "app"),
                ("tenant", "acme co")
            ])
        );
    }

    #[test]
    fn an_absent_value_drops_the_rule_unless_skipped() {
        let strict = rule(r#"{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}"#);
        assert_eq!(strict.descriptor(&Req::with(&[])), None);
        assert_eq!(entries(strict.descriptor(&Req::with(&[("x-user", "")]))), pairs(&[("user", "")]));
        let lenient = rule(
            r#"{"actions": [{"generic_key": {"descriptor_value": "g"}},
                {"request_headers": {"header_name": "x-user", "descriptor_key": "user", "skip_if_absent": true}}]}"#,
        );
        assert_eq!(entries(lenient.descriptor(&Req::with(&[]))), pairs(&[("generic_key", "g")]));
        let only_skipped = rule(
            r#"{"actions": [{"request_headers": {"header_name": "x", "descriptor_key": "x", "skip_if_absent": true}}]}"#,
        );
        assert_eq!(only_skipped.descriptor(&Req::with(&[])), None);
        let source = rule(r#"{"actions": [{"source_cluster": {}}]}"#);
        assert_eq!(source.descriptor(&Req::with(&[])), None);
        let mut no_peer = Req::with(&[]);
        no_peer.remote = None;
        assert_eq!(rule(r#"{"actions": [{"remote_address": {}}]}"#).descriptor(&no_peer), None);
    }

    #[test]
    fn header_value_match_follows_envoy() {
        let admin = rule(
            r#"{"actions": [{"header_value_match": {"descriptor_value": "admin",
                "headers": [{"name": ":path", "prefix_match": "/admin"}]}}]}"#,
        );
        assert_eq!(
            entries(admin.descriptor(&Req::with(&[(":path", "/admin/x")]))),
            pairs(&[("header_match", "admin")])
        );
        assert_eq!(admin.descriptor(&Req::with(&[(":path", "/api")])), None);
        let not_admin = rule(
            r#"{"actions": [{"header_value_match": {"descriptor_value": "other", "expect_match": false,
                "descriptor_key": "kind", "headers": [{"name": ":path", "prefix_match": "/admin"}]}}]}"#,
        );
        assert_eq!(entries(not_admin.descriptor(&Req::with(&[(":path", "/api")]))), pairs(&[("kind", "other")]));
        assert_eq!(not_admin.descriptor(&Req::with(&[(":path", "/admin")])), None);
    }

    #[test]
    fn header_matchers() {
        let m = |json: &str| -> HeaderMatcher { serde_json::from_str(json).unwrap() };
        let req = Req::with(&[("x-env", "Staging-EU")]);
        assert!(m(r#"{"name": "x-env", "exact_match": "Staging-EU"}"#).matches(&req));
        assert!(m(r#"{"name": "x-env", "suffix_match": "-EU"}"#).matches(&req));
        assert!(m(r#"{"name": "x-env", "contains_match": "ing"}"#).matches(&req));
        assert!(m(r#"{"name": "x-env", "string_match": {"prefix": "staging", "ignore_case": true}}"#).matches(&req));
        assert!(!m(r#"{"name": "x-env", "string_match": {"prefix": "staging"}}"#).matches(&req));
        assert!(m(r#"{"name": "x-env", "exact_match": "prod", "invert_match": true}"#).matches(&req));
        // Absent headers: only "not present" matches, inverted or not.
        assert!(m(r#"{"name": "x-none", "present_match": false}"#).matches(&req));
        assert!(m(r#"{"name": "x-none", "present_match": true, "invert_match": true}"#).matches(&req));
        assert!(!m(r#"{"name": "x-none", "exact_match": "a", "invert_match": true}"#).matches(&req));
        assert!(m(r#"{"name": "x-none", "exact_match": "", "treat_missing_header_as_empty": true}"#).matches(&req));
        assert!(m(r#"{"name": "x-env", "present_match": true}"#).matches(&req));
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |json: &str| serde_json::from_str::<RateLimitRule>(json).unwrap().validate("rate_limits[0]");
        assert_eq!(bad(r#"{"actions": []}"#).unwrap_err(), "rate_limits[0].actions: must not be empty");
        assert_eq!(
            bad(r#"{"actions": [{"request_headers": {"header_name": "", "descriptor_key": "k"}}]}"#).unwrap_err(),
            "rate_limits[0].actions[0].request_headers.header_name: must not be empty"
        );
        let two_ways = bad(r#"{"actions": [{"header_value_match": {"descriptor_value": "v",
                "headers": [{"name": "a", "exact_match": "x", "prefix_match": "y"}]}}]}"#)
        .unwrap_err();
        assert!(two_ways.starts_with("rate_limits[0].actions[0].header_value_match.headers[0]: give exactly one"));
        let err = serde_json::from_str::<RateLimitRule>(r#"{"actions": [{"masked_remote_address": {}}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `masked_remote_address`"), "{err}");
    }

    #[test]
    fn addresses_and_queries() {
        assert_eq!(ip_of("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(ip_of("10.0.0.1"), "10.0.0.1");
        assert_eq!(ip_of("[::1]:80"), "::1");
        assert_eq!(ip_of("fe80::1"), "fe80::1");
        assert_eq!(query_parameter("/p?a=1&b=%41x&b=2", "b").as_deref(), Some("Ax"));
        assert_eq!(query_parameter("/p?flag&x=1#frag", "flag").as_deref(), Some(""));
        assert_eq!(query_parameter("/p?x=1#y=2", "y"), None);
        assert_eq!(query_parameter("/p", "x"), None);
        assert_eq!(query_parameter("/p?x=%zz", "x").as_deref(), Some("%zz"));
        let rules = vec![
            rule(r#"{"actions": [{"generic_key": {"descriptor_value": "a"}}]}"#),
            rule(r#"{"actions": [{"request_headers": {"header_name": "x-absent", "descriptor_key": "k"}}]}"#),
            rule(r#"{"actions": [{"generic_key": {"descriptor_value": "b"}}]}"#),
        ];
        assert_eq!(descriptors(&rules, &Req::with(&[])).len(), 2);
    }
}
