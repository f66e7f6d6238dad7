//! Reading `catalog/<kind>/<name>/item.yaml` and checking every item: the schema (through
//! meshwork-yaml, so errors carry line, column and field), then what the schema cannot say —
//! names, versions, allowed values, files that must exist, references between items.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::item::{COMPATIBILITY, DOCUMENT_TYPES, Item, Kind, TECHNOLOGY};

/// One thing wrong with one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// The field, with its position when the parser knows it (`line 3 column 1: category`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Everything wrong with a catalog, one line each.
#[derive(Debug)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

#[derive(Clone, Debug)]
pub struct Entry {
    pub item: Item,
    /// The item's directory.
    pub dir: PathBuf,
}

impl Entry {
    /// A path the item names, relative to its directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        normalize(&self.dir.join(rel))
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join("item.yaml")
    }
}

#[derive(Clone, Debug)]
pub struct Catalog {
    /// The `catalog/` directory.
    pub root: PathBuf,
    /// The repository around it (for sources, crates and tests).
    pub repo: PathBuf,
    /// Sorted by kind, then name.
    pub entries: Vec<Entry>,
}

/// `a/b/../c` → `a/c`, without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `MAJOR.MINOR.PATCH` with an optional `-pre` and `+build` (semver.org).
pub fn is_semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p.len() == 1 || !p.starts_with('0')))
        && s[core.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b"-+.".contains(&b))
}

fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s[19..].contains(['+', '-']))
}

impl Catalog {
    /// Reads and checks every item; all problems at once, or the catalog.
    pub fn load(root: &Path) -> Result<Catalog, Problems> {
        let root = normalize(root);
        let repo = root.parent().map(Path::to_path_buf).unwrap_or_default();
        let repo = if repo.as_os_str().is_empty() { PathBuf::from(".") } else { repo };
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        if !root.is_dir() {
            problems.push(Problem { file: root.clone(), field: String::new(), message: "is not a directory".into() });
            return Err(Problems(problems));
        }
        for kind in Kind::ALL {
            let dir = root.join(kind.dir());
            let Ok(read) = std::fs::read_dir(&dir) else { continue };
            let mut dirs: Vec<PathBuf> = read.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
            dirs.sort();
            for item_dir in dirs {
                let file = item_dir.join("item.yaml");
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        problems.push(Problem { file, field: String::new(), message: format!("cannot be read: {e}") });
                        continue;
                    }
                };
                match meshwork_yaml::from_str::<Item>(&text) {
                    Ok(item) => {
                        let entry = Entry { item, dir: item_dir };
                        check_item(&entry, kind, &repo, &mut problems);
                        entries.push(entry);
                    }
                    Err(e) => {
                        let mut field = e.path.clone();
                        if let Some((l, c)) = e.position {
                            field = if field.is_empty() || field == "." {
                                format!("line {l} column {c}")
                            } else {
                                format!("line {l} column {c}: {field}")
                            };
                        }
                        problems.push(Problem { file, field, message: e.message });
                    }
                }
            }
        }
        check_references(&entries, &mut problems);
        if problems.is_empty() { Ok(Catalog { root, repo, entries }) } else { Err(Problems(problems)) }
    }

    /// An item by `kind/name`, or by name when only one kind has it.
    pub fn get(&self, id: &str) -> anyhow::Result<&Entry> {
        let found: Vec<&Entry> = match id.split_once('/') {
            Some((kind, name)) => {
                let kind = Kind::parse(kind)?;
                self.entries.iter().filter(|e| e.item.kind == kind && e.item.name == name).collect()
            }
            None => self.entries.iter().filter(|e| e.item.name == id).collect(),
        };
        match found.as_slice() {
            [one] => Ok(one),
            [] => anyhow::bail!("no catalog item {id:?} (meshwork catalog list shows them)"),
            many => anyhow::bail!(
                "{id:?} names {} items ({}); say which with kind/name",
                many.len(),
                many.iter().map(|e| e.item.id()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.item.kind == kind)
    }
}

fn check_item(entry: &Entry, kind: Kind, repo: &Path, problems: &mut Vec<Problem>) {
    let item = &entry.item;
    let mut bad =
        |field: &str, message: String| problems.push(Problem { file: entry.file(), field: field.to_owned(), message });
    let dir_name = entry.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !is_name(&item.name) {
        bad("name", format!("{:?} must be lower-case letters, digits and '-', at most 63", item.name));
    } else if item.name != dir_name {
        bad("name", format!("{:?} must match its directory {dir_name:?}", item.name));
    }
    if item.kind != kind {
        bad("kind", format!("is {} but the item is under catalog/{}/", item.kind.name(), kind.dir()));
    }
    if !is_semver(&item.version) {
        bad("version", format!("{:?} is not a semantic version (MAJOR.MINOR.PATCH)", item.version));
    }
    if let Some(c) = &item.created_at
        && !is_rfc3339(c)
    {
        bad("createdAt", format!("{c:?} is not an RFC 3339 time (2026-01-31T12:00:00Z)"));
    }
    if item.display_name.trim().is_empty() {
        bad("displayName", "must not be empty".into());
    }
    if item.description.trim().is_empty() || item.description.len() > 400 {
        bad("description", "must be one to 400 characters".into());
    }
    for (field, values, allowed) in
        [("technology", &item.technology, &TECHNOLOGY[..]), ("compatibility", &item.compatibility, &COMPATIBILITY[..])]
    {
        if values.is_empty() {
            bad(field, format!("must list at least one of {}", allowed.join(", ")));
        }
        for (i, v) in values.iter().enumerate() {
            if !allowed.contains(&v.as_str()) {
                bad(&format!("{field}[{i}]"), format!("{v:?} is not one of {}", allowed.join(", ")));
            }
        }
    }
    let mut must_exist = |field: String, rel: &str, dir: bool| {
        let path = entry.path(rel);
        let ok = if dir { path.is_dir() } else { path.is_file() };
        if !ok {
            problems.push(Problem { file: entry.file(), field, message: format!("{} does not exist", path.display()) });
        }
    };
    must_exist("readme".into(), &item.readme, false);
    for (i, e) in item.examples.iter().enumerate() {
        must_exist(format!("examples[{i}]"), e, false);
    }
    for (i, c) in item.conformance.iter().enumerate() {
        must_exist(format!("conformance[{i}]"), c, false);
    }
    if let Some(s) = &item.source {
        must_exist("source".into(), s, true);
    }
    let sections = [
        (Kind::Filter, item.filter.is_some()),
        (Kind::Ebpf, item.ebpf.is_some()),
        (Kind::Pattern, item.pattern.is_some()),
        (Kind::Policy, item.policy.is_some()),
    ];
    let mut bad =
        |field: &str, message: String| problems.push(Problem { file: entry.file(), field: field.to_owned(), message });
    for (k, present) in sections {
        if k == item.kind && !present {
            bad(k.name(), format!("a {} item needs its `{}:` section", k.name(), k.name()));
        } else if k != item.kind && present {
            bad(k.name(), format!("only {} items have a `{}:` section", k.name(), k.name()));
        }
    }
    if let Some(f) = &item.filter {
        if !["0.2.0", "0.2.1"].contains(&f.abi.as_str()) {
            bad("filter.abi", format!("{:?}: meshwork speaks proxy-wasm ABI 0.2.0 and 0.2.1", f.abi));
        }
        let manifest = item.source.as_deref().map(|s| entry.path(s).join("Cargo.toml"));
        let declares = manifest
            .as_ref()
            .and_then(|m| std::fs::read_to_string(m).ok())
            .is_some_and(|t| t.contains(&format!("name = \"{}\"", f.crate_name)));
        if !declares {
            bad("filter.crate", format!("{:?} is not the package of the item's source", f.crate_name));
        }
        if let Some(p) = &f.playground
            && !meshwork_playground::PLAYGROUNDS.iter().any(|pg| pg.name == p)
        {
            let known: Vec<&str> = meshwork_playground::PLAYGROUNDS.iter().map(|pg| pg.name).collect();
            bad("filter.playground", format!("{p:?} is not one of {}", known.join(", ")));
        }
    }
    if let Some(e) = &item.ebpf {
        let src = repo.join("ebpf/meshwork-ebpf-programs/src/bin").join(format!("{}.rs", e.program));
        if !src.is_file() {
            bad("ebpf.program", format!("{:?} has no source at {}", e.program, src.display()));
        }
        if !["interface", "cgroup"].contains(&e.attach.as_str()) {
            bad("ebpf.attach", format!("{:?} is not interface or cgroup", e.attach));
        }
        if e.capabilities.is_empty() {
            bad("ebpf.capabilities", "must name the capabilities loading it needs".into());
        }
        for (i, c) in e.capabilities.iter().enumerate() {
            if !c.starts_with("CAP_") || !c[4..].bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                bad(&format!("ebpf.capabilities[{i}]"), format!("{c:?} is not a capability name (CAP_BPF)"));
            }
        }
    }
    if let Some(p) = &item.pattern {
        for (field, rel) in [("pattern.config", Some(&p.config)), ("pattern.envoy", p.envoy.as_ref())] {
            if let Some(rel) = rel
                && !entry.path(rel).is_file()
            {
                bad(field, format!("{} does not exist", entry.path(rel).display()));
            }
        }
        check_test_name(&p.test, repo, &mut bad);
    }
    if let Some(p) = &item.policy {
        if !entry.path(&p.rego).is_file() {
            bad("policy.rego", format!("{} does not exist", entry.path(&p.rego).display()));
        }
        if !p.rule.starts_with("data.") {
            bad("policy.rule", format!("{:?} must be a rule path starting with data.", p.rule));
        }
        if p.applies_to.is_empty() {
            bad("policy.applies_to", format!("must name one or more of {}", DOCUMENT_TYPES.join(", ")));
        }
        for (i, t) in p.applies_to.iter().enumerate() {
            if !DOCUMENT_TYPES.contains(&t.as_str()) {
                bad(&format!("policy.applies_to[{i}]"), format!("{t:?} is not one of {}", DOCUMENT_TYPES.join(", ")));
            }
        }
        if p.passes.is_empty() || p.fails.is_empty() {
            bad("policy", "needs documents it passes and documents it fails (passes:, fails:), its own test".into());
        }
        for (field, list) in [("policy.passes", &p.passes), ("policy.fails", &p.fails)] {
            for (i, rel) in list.iter().enumerate() {
                if !entry.path(rel).is_file() {
                    bad(&format!("{field}[{i}]"), format!("{} does not exist", entry.path(rel).display()));
                }
            }
        }
    }
}

/// `tests/e2e/<file>.rs::<test>` names a test function that exists.
fn check_test_name(test: &str, repo: &Path, bad: &mut impl FnMut(&str, String)) {
    let Some((file, name)) = test.split_once("::") else {
        bad("pattern.test", format!("{test:?} is not <file>::<test function>"));
        return;
    };
    let path = repo.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.contains(&format!("fn {name}(")) => {}
        Ok(_) => bad("pattern.test", format!("{} has no test fn {name}", path.display())),
        Err(_) => bad("pattern.test", format!("{} does not exist", path.display())),
    }
}

fn check_references(entries: &[Entry], problems: &mut Vec<Problem>) {
    let has = |kind: Kind, name: &str| entries.iter().any(|e| e.item.kind == kind && e.item.name == name);
    for entry in entries {
        let Some(p) = &entry.item.pattern else { continue };
        for (field, kind, names) in
            [("pattern.filters", Kind::Filter, &p.filters), ("pattern.ebpf", Kind::Ebpf, &p.ebpf)]
        {
            for (i, name) in names.iter().enumerate() {
                if !has(kind, name) {
                    problems.push(Problem {
                        file: entry.file(),
                        field: format!("{field}[{i}]"),
                        message: format!("no {} item named {name:?} in the catalog", kind.name()),
                    });
                }
            }
        }
        if p.filters.is_empty() && p.ebpf.is_empty() {
            problems.push(Problem {
                file: entry.file(),
                field: "pattern".into(),
                message: "a pattern composes at least one filter or eBPF program".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshery_field_names_are_accepted() {
        let item: crate::Item = meshwork_yaml::from_str(
            "name: x\ndisplayName: X\nkind: pattern\npublishedVersion: 1.0.0\ndescription: d\nclass: reference-architecture\ntype: Traffic-management\ntechnology: [webassembly]\ncompatibility: [istio]\nlicense: MIT\nprovider: {name: p}\nreadme: README.md\n",
        )
        .unwrap();
        assert_eq!((item.version.as_str(), item.category), ("1.0.0", crate::item::Category::TrafficManagement));
    }

    #[test]
    fn versions_and_names() {
        assert!(is_semver("0.1.0") && is_semver("1.2.3-rc.1+b5"));
        assert!(!is_semver("1.2") && !is_semver("01.2.3") && !is_semver("1.2.x"));
        assert!(is_name("resilient-upstream") && !is_name("Resilient") && !is_name("-a"));
        assert!(is_rfc3339("2026-12-06T00:00:00Z") && !is_rfc3339("yesterday"));
        assert_eq!(normalize(Path::new("catalog/filters/x/../../../filters/x")), PathBuf::from("filters/x"));
    }
}
