//! The limit tree: envoyproxy/ratelimit's configuration and its lookup rules.
//!
//! A domain holds nested descriptors; each has a `key`, an optional `value`, an optional
//! `rate_limit` and children. A request descriptor `[(k1, v1), (k2, v2)]` walks the tree one
//! entry per level. At each level the entry's node is, in order of preference: the node with
//! that key and value; a node whose value ends in `*` and is a prefix of the entry's value
//! (first declared wins); the node with that key and no value. The descriptor's limit is the
//! limit of the node its *last* entry reaches: a shorter or longer descriptor than the tree
//! path gets no limit from it. A node with a key and no value matches any value and, since the
//! counter is named after the request's values, counts each value separately.

use alloc::borrow::ToOwned;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::descriptor::Descriptor;
use crate::window::Unit;

/// One domain's limits file, as envoyproxy/ratelimit reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct DomainSpec {
    pub domain: String,
    #[cfg_attr(feature = "serde", serde(default))]
    pub descriptors: Vec<DescriptorSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct DescriptorSpec {
    pub key: String,
    /// Absent or empty: any value, counted per value. Ending in `*`: values with that prefix.
    #[cfg_attr(feature = "serde", serde(default))]
    pub value: Option<String>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub rate_limit: Option<RateLimitSpec>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub descriptors: Vec<DescriptorSpec>,
    /// Count and report, but never answer OVER_LIMIT for this limit.
    #[cfg_attr(feature = "serde", serde(default))]
    pub shadow_mode: bool,
    /// envoyproxy/ratelimit's per-value statistics switch; accepted for compatibility, and
    /// without effect here (the service keeps no per-descriptor statistics).
    #[cfg_attr(feature = "serde", serde(default))]
    pub detailed_metric: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RateLimitSpec {
    /// second, minute, hour or day (any case); must be absent when `unlimited`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub unit: Option<String>,
    /// 0 refuses every request.
    #[cfg_attr(feature = "serde", serde(default))]
    pub requests_per_unit: Option<u32>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub unlimited: bool,
    /// Lets other limits replace this one.
    #[cfg_attr(feature = "serde", serde(default))]
    pub name: Option<String>,
    /// Names of limits this one replaces when both apply to one request.
    #[cfg_attr(feature = "serde", serde(default))]
    pub replaces: Vec<Replaces>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Replaces {
    pub name: String,
}

/// What a matched node says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Unlimited,
    PerUnit { requests_per_unit: u32, unit: Unit },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub rule: Rule,
    pub shadow_mode: bool,
    pub name: Option<String>,
    pub replaces: Vec<String>,
    /// `domain.key_value.key` — where the limit sits in the tree, for logs.
    pub full_key: String,
}

#[derive(Clone, Debug, Default)]
struct Node {
    limit: Option<Limit>,
    /// key → value → node.
    exact: BTreeMap<String, BTreeMap<String, Node>>,
    /// (key, value prefix, node) in declaration order.
    prefixed: Vec<(String, String, Node)>,
    any_value: BTreeMap<String, Node>,
}

impl Node {
    fn child(&self, key: &str, value: &str) -> Option<&Node> {
        self.exact
            .get(key)
            .and_then(|values| values.get(value))
            .or_else(|| self.prefixed.iter().find(|(k, p, _)| k == key && value.starts_with(p.as_str())).map(|c| &c.2))
            .or_else(|| self.any_value.get(key))
    }
}

/// A configuration error, naming the field: `descriptors[0].rate_limit.unit: ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every domain's limit tree.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    domains: BTreeMap<String, Node>,
}

impl Limits {
    /// Adds a domain; a domain may be defined once.
    pub fn add(&mut self, spec: &DomainSpec) -> Result<(), ConfigError> {
        if spec.domain.is_empty() {
            return Err(ConfigError("domain: must not be empty".into()));
        }
        if self.domains.contains_key(&spec.domain) {
            return Err(ConfigError(format!("domain: {:?} is defined more than once", spec.domain)));
        }
        let mut root = Node::default();
        load(&mut root, &spec.descriptors, "descriptors", &spec.domain)?;
        self.domains.insert(spec.domain.clone(), root);
        Ok(())
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// The limit for `descriptor` in `domain`, if any (unknown domains have none).
    pub fn limit_for(&self, domain: &str, descriptor: &Descriptor) -> Option<&Limit> {
        let mut node = self.domains.get(domain)?;
        let last = descriptor.entries.len().checked_sub(1)?;
        for (i, entry) in descriptor.entries.iter().enumerate() {
            node = node.child(&entry.key, &entry.value)?;
            if i == last {
                return node.limit.as_ref();
            }
        }
        None
    }
}

fn load(parent: &mut Node, specs: &[DescriptorSpec], path: &str, parent_key: &str) -> Result<(), ConfigError> {
    for (i, spec) in specs.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if spec.key.is_empty() {
            return Err(ConfigError(format!("{here}.key: must not be empty")));
        }
        let value = spec.value.as_deref().filter(|v| !v.is_empty());
        let full_key = match value {
            Some(v) => format!("{parent_key}.{}_{v}", spec.key),
            None => format!("{parent_key}.{}", spec.key),
        };
        let mut node = Node { limit: limit(spec, &here, &full_key)?, ..Node::default() };
        load(&mut node, &spec.descriptors, &format!("{here}.descriptors"), &full_key)?;
        let duplicate = || {
            let shown = value.map_or(String::new(), |v| format!(" value {v:?}"));
            ConfigError(format!("{here}: key {:?}{shown} is already defined at this level", spec.key))
        };
        match value {
            None if parent.any_value.contains_key(&spec.key) => return Err(duplicate()),
            None => {
                parent.any_value.insert(spec.key.clone(), node);
            }
            Some(v) => {
                if let Some(prefix) = v.strip_suffix('*') {
                    if parent.prefixed.iter().any(|(k, p, _)| *k == spec.key && p == prefix) {
                        return Err(duplicate());
                    }
                    parent.prefixed.push((spec.key.clone(), prefix.to_owned(), node));
                } else if parent.exact.entry(spec.key.clone()).or_default().insert(v.to_owned(), node).is_some() {
                    return Err(duplicate());
                }
            }
        }
    }
    Ok(())
}

fn limit(spec: &DescriptorSpec, here: &str, full_key: &str) -> Result<Option<Limit>, ConfigError> {
    let Some(rl) = &spec.rate_limit else {
        if spec.shadow_mode {
            return Err(ConfigError(format!("{here}.shadow_mode: there is no rate_limit to shadow")));
        }
        return Ok(None);
    };
    let here = format!("{here}.rate_limit");
    let rule = if rl.unlimited {
        if rl.unit.is_some() {
            return Err(ConfigError(format!("{here}.unit: must not be set when unlimited is true")));
        }
        if rl.requests_per_unit.is_some() {
            return Err(ConfigError(format!("{here}.requests_per_unit: must not be set when unlimited is true")));
        }
        Rule::Unlimited
    } else {
        let unit = match rl.unit.as_deref() {
            None => return Err(ConfigError(format!("{here}.unit: missing (second, minute, hour or day)"))),
            Some(u) => Unit::parse(u).ok_or_else(|| {
                ConfigError(format!("{here}.unit: unknown unit {u:?} (use second, minute, hour or day)"))
            })?,
        };
        let requests_per_unit = rl
            .requests_per_unit
            .ok_or_else(|| ConfigError(format!("{here}.requests_per_unit: missing (0 refuses every request)")))?;
        Rule::PerUnit { requests_per_unit, unit }
    };
    if rl.name.as_deref() == Some("") {
        return Err(ConfigError(format!("{here}.name: must not be empty when given")));
    }
    for (j, r) in rl.replaces.iter().enumerate() {
        if r.name.is_empty() {
            return Err(ConfigError(format!("{here}.replaces[{j}].name: must not be empty")));
        }
        if rl.name.as_deref() == Some(r.name.as_str()) {
            return Err(ConfigError(format!("{here}.replaces[{j}].name: a limit cannot replace itself")));
        }
    }
    Ok(Some(Limit {
        rule,
        shadow_mode: spec.shadow_mode,
        name: rl.name.clone(),
        replaces: rl.replaces.iter().map(|r| r.name.clone()).collect(),
        full_key: full_key.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    pub(crate) fn limits(yaml: &str) -> Limits {
        let spec: DomainSpec = serde_saphyr::from_str(yaml).unwrap();
        let mut l = Limits::default();
        l.add(&spec).unwrap();
        l
    }

    fn rpu(l: &Limits, domain: &str, entries: &[(&str, &str)]) -> Option<u32> {
        match l.limit_for(domain, &Descriptor::new(entries.iter().copied()))?.rule {
            Rule::PerUnit { requests_per_unit, .. } => Some(requests_per_unit),
            Rule::Unlimited => Some(u32::MAX),
        }
    }

    const TREE: &str = r#"
domain: edge
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: user
    value: vip
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: user
    value: bot-*
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: user
    value: root
    rate_limit: {unlimited: true}
  - key: remote_address
    descriptors:
      - key: method
        value: POST
        rate_limit: {unit: second, requests_per_unit: 2}
  - key: tenant
    rate_limit: {unit: hour, requests_per_unit: 5}
    descriptors:
      - key: path
        rate_limit: {unit: hour, requests_per_unit: 3}
"#;

    #[test]
    fn value_beats_prefix_beats_any_value() {
        let l = limits(TREE);
        assert_eq!(rpu(&l, "edge", &[("user", "alice")]), Some(10));
        assert_eq!(rpu(&l, "edge", &[("user", "vip")]), Some(100));
        assert_eq!(rpu(&l, "edge", &[("user", "bot-7")]), Some(1));
        assert_eq!(rpu(&l, "edge", &[("user", "root")]), Some(u32::MAX));
        assert_eq!(rpu(&l, "other", &[("user", "alice")]), None);
        assert_eq!(rpu(&l, "edge", &[("nobody", "x")]), None);
    }

    #[test]
    fn the_last_entry_must_reach_a_limit() {
        let l = limits(TREE);
        assert_eq!(rpu(&l, "edge", &[("remote_address", "10.0.0.1"), ("method", "POST")]), Some(2));
        assert_eq!(rpu(&l, "edge", &[("remote_address", "10.0.0.1"), ("method", "GET")]), None);
        // The middle node has no limit of its own.
        assert_eq!(rpu(&l, "edge", &[("remote_address", "10.0.0.1")]), None);
        // Deeper than the tree: no limit, even though a prefix of it has one.
        assert_eq!(rpu(&l, "edge", &[("user", "alice"), ("extra", "x")]), None);
        assert_eq!(rpu(&l, "edge", &[("tenant", "a")]), Some(5));
        assert_eq!(rpu(&l, "edge", &[("tenant", "a"), ("path", "/x")]), Some(3));
        assert_eq!(rpu(&l, "edge", &[]), None);
    }

    #[test]
    fn full_keys_name_the_tree_path() {
        let l = limits(TREE);
        let d = Descriptor::new([("remote_address", "1.2.3.4"), ("method", "POST")]);
        assert_eq!(l.limit_for("edge", &d).unwrap().full_key, "edge.remote_address.method_POST");
    }

    fn error(yaml: &str) -> String {
        let spec: DomainSpec = serde_saphyr::from_str(yaml).unwrap();
        Limits::default().add(&spec).unwrap_err().0
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(error("domain: ''"), "domain: must not be empty");
        assert_eq!(
            error("domain: d\ndescriptors: [{key: a, descriptors: [{key: ''}]}]"),
            "descriptors[0].descriptors[0].key: must not be empty"
        );
        assert_eq!(
            error("domain: d\ndescriptors: [{key: a, rate_limit: {unit: fortnight, requests_per_unit: 1}}]"),
            "descriptors[0].rate_limit.unit: unknown unit \"fortnight\" (use second, minute, hour or day)"
        );
        assert_eq!(
            error("domain: d\ndescriptors: [{key: a, rate_limit: {requests_per_unit: 1}}]"),
            "descriptors[0].rate_limit.unit: missing (second, minute, hour or day)"
        );
        assert_eq!(
            error("domain: d\ndescriptors: [{key: a, rate_limit: {unit: second}}]"),
            "descriptors[0].rate_limit.requests_per_unit: missing (0 refuses every request)"
        );
        assert_eq!(
            error("domain: d\ndescriptors: [{key: a, rate_limit: {unlimited: true, unit: second}}]"),
            "descriptors[0].rate_limit.unit: must not be set when unlimited is true"
        );
        assert_eq!(
            error("domain: d\ndescriptors: [{key: a, value: b}, {key: a, value: b}]"),
            "descriptors[1]: key \"a\" value \"b\" is already defined at this level"
        );
        assert_eq!(
            error("domain: d\ndescriptors: [{key: a}, {key: a, value: ''}]"),
            "descriptors[1]: key \"a\" is already defined at this level"
        );
        assert_eq!(
            error("domain: d\ndescriptors: [{key: a, shadow_mode: true}]"),
            "descriptors[0].shadow_mode: there is no rate_limit to shadow"
        );
        assert_eq!(
            error(
                "domain: d\ndescriptors: [{key: a, rate_limit: {unit: second, requests_per_unit: 1, name: n, replaces: [{name: n}]}}]"
            ),
            "descriptors[0].rate_limit.replaces[0].name: a limit cannot replace itself"
        );
        let unknown = serde_saphyr::from_str::<DomainSpec>("domain: d\ndescriptors: [{key: a, rate_limits: {}}]")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `rate_limits`"), "{unknown}");
    }

    #[test]
    fn a_domain_is_defined_once() {
        let mut l = Limits::default();
        let spec = DomainSpec { domain: "d".into(), descriptors: Vec::new() };
        l.add(&spec).unwrap();
        assert_eq!(l.add(&spec).unwrap_err().0, "domain: \"d\" is defined more than once");
    }
}
