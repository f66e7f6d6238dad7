//! A catalog item's metadata (`item.yaml`): a superset of Meshery's `catalogData` (class,
//! compatibility, type, patternInfo, patternCaveats, publishedVersion) and of Artifact Hub's
//! `artifacthub-pkg.yml` (name, displayName, version, createdAt, description, keywords, license,
//! provider, links, homeURL, readme), plus what each kind needs to be built and run.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Pattern,
    Filter,
    Ebpf,
    Policy,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Pattern, Kind::Filter, Kind::Ebpf, Kind::Policy];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pattern => "pattern",
            Kind::Filter => "filter",
            Kind::Ebpf => "ebpf",
            Kind::Policy => "policy",
        }
    }

    /// The directory under `catalog/` that holds items of this kind.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Pattern => "patterns",
            Kind::Filter => "filters",
            Kind::Ebpf => "ebpf",
            Kind::Policy => "policies",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::Pattern => "Pattern",
            Kind::Filter => "Wasm filter",
            Kind::Ebpf => "eBPF program",
            Kind::Policy => "Policy",
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Kind> {
        let t = text.trim_end_matches('s');
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == t || (t == "policie" && *k == Kind::Policy))
            .ok_or_else(|| anyhow::anyhow!("unknown kind {text:?} (pattern, filter, ebpf, policy)"))
    }
}

/// Meshery's `class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    Official,
    Verified,
    ReferenceArchitecture,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Official => "official",
            Class::Verified => "verified",
            Class::ReferenceArchitecture => "reference architecture",
        }
    }
}

/// Meshery's catalog `type` (its categories).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Category {
    Deployment,
    Observability,
    Resiliency,
    Scaling,
    Security,
    #[serde(rename = "Traffic-management")]
    TrafficManagement,
    Troubleshooting,
    Workloads,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Deployment,
        Category::Observability,
        Category::Resiliency,
        Category::Scaling,
        Category::Security,
        Category::TrafficManagement,
        Category::Troubleshooting,
        Category::Workloads,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Deployment => "Deployment",
            Category::Observability => "Observability",
            Category::Resiliency => "Resiliency",
            Category::Scaling => "Scaling",
            Category::Security => "Security",
            Category::TrafficManagement => "Traffic-management",
            Category::Troubleshooting => "Troubleshooting",
            Category::Workloads => "Workloads",
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Category> {
        Category::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(text)).ok_or_else(|| {
            anyhow::anyhow!("unknown category {text:?} ({})", Category::ALL.map(Category::name).join(", "))
        })
    }
}

/// Where an item runs.
pub const COMPATIBILITY: [&str; 8] = ["meshwork", "envoy", "istio", "envoy-gateway", "consul", "kuma", "linux", "opa"];
/// What it is made with (Meshery's technology filter).
pub const TECHNOLOGY: [&str; 4] = ["webassembly", "ebpf", "opa", "meshwork"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub name: String,
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// The Cargo package that builds the module.
    #[serde(rename = "crate")]
    pub crate_name: String,
    /// The proxy-wasm ABI it speaks.
    pub abi: String,
    /// Its root context id, where it needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// The playground page that runs its decision logic in the browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playground: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbpfSpec {
    /// The program's object: `target/ebpf/<program>.o`.
    pub program: String,
    pub program_type: String,
    /// `interface` (XDP) or `cgroup`.
    pub attach: String,
    /// Linux capabilities the loader needs.
    pub capabilities: Vec<String>,
    /// The command that loads it.
    pub load: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternSpec {
    /// meshwork's configuration of the pattern (relative to the item).
    pub config: String,
    /// An Envoy bootstrap of the same pattern, where one applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy: Option<String>,
    /// The catalog filters it composes, in chain order.
    #[serde(default)]
    pub filters: Vec<String>,
    /// The catalog eBPF programs it composes.
    #[serde(default)]
    pub ebpf: Vec<String>,
    /// The end-to-end test that proves its behaviour (`tests/e2e/<file>.rs::<test>`).
    pub test: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The Rego module (relative to the item).
    pub rego: String,
    /// The rule whose set holds the violations (`data.meshwork.retry_bounded.violations`).
    pub rule: String,
    /// The documents it judges: `meshwork-config`, `envoy-bootstrap`, `istio-wasmplugin`,
    /// `catalog-item`.
    pub applies_to: Vec<String>,
    /// Documents it must pass, and documents it must find violations in (relative paths).
    #[serde(default)]
    pub passes: Vec<String>,
    #[serde(default)]
    pub fails: Vec<String>,
}

/// Document types a policy can judge.
pub const DOCUMENT_TYPES: [&str; 4] = ["meshwork-config", "envoy-bootstrap", "istio-wasmplugin", "catalog-item"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Item {
    pub name: String,
    pub display_name: String,
    pub kind: Kind,
    /// Meshery's `publishedVersion` is accepted for it.
    #[serde(alias = "publishedVersion")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    pub description: String,
    pub class: Class,
    /// Meshery's catalog `type`, which is accepted for it.
    #[serde(alias = "type")]
    pub category: Category,
    pub technology: Vec<String>,
    pub compatibility: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    pub license: String,
    pub provider: Provider,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    #[serde(default, rename = "homeURL", skip_serializing_if = "Option::is_none")]
    pub home_url: Option<String>,
    /// Meshery's patternInfo and patternCaveats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern_caveats: Option<String>,
    /// Relative to the item's directory.
    pub readme: String,
    #[serde(default)]
    pub examples: Vec<String>,
    /// The source directory (relative to the item).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Conformance results (relative paths), once it has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conformance: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebpf: Option<EbpfSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<PatternSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
}

impl Item {
    /// `kind/name`, how the CLI names an item.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind.name(), self.name)
    }
}
