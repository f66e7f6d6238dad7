//! `catalog export`: the catalog in the shapes other catalogs read.
//!
//! - **Meshery**: the page its catalog API answers (`GET /api/catalog/content/{pattern|filter}`
//!   with `page, pageSize, search, order, type, technology, class`): `{patterns|filters[], page,
//!   pageSize, totalCount}` with each item's `catalogData` (meshery/schemas v1beta3 design API;
//!   filters in the legacy snake_case form, `filter_file`, `filter_resource`, `catalog_data`).
//!   Meshery has no eBPF or policy content yet; those kinds export in the same shape under
//!   `ebpf_programs` and `policies`.
//! - **Artifact Hub**: one repository per kind, laid out `<package>/<version>/` with an
//!   `artifacthub-pkg.yml` (artifacthub.io docs, "Meshery designs" repositories), the README,
//!   and the item's files (`design.yml` for patterns).

use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::build::Index;
use crate::item::{Category, Kind};
use crate::load::{Catalog, Entry};

/// Meshery's query parameters.
#[derive(Clone, Debug, Default)]
pub struct MesheryQuery {
    pub page: usize,
    pub page_size: usize,
    pub search: Option<String>,
    /// `name asc`, `name desc` (Meshery's `order`).
    pub order: Option<String>,
    /// Meshery's `type`: a category.
    pub category: Option<Category>,
    pub technology: Option<String>,
    pub class: Option<String>,
}

/// A stable UUID for an item (RFC 9562 version 8: from sha256 of its id), so exports agree.
pub fn item_uuid(entry: &Entry) -> String {
    let h = Sha256::digest(format!("meshwork:{}", entry.item.id()).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = crate::hex(&b);
    format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
}

fn created(entry: &Entry) -> String {
    entry.item.created_at.clone().unwrap_or_else(|| "2026-01-01T00:00:00Z".to_owned())
}

fn catalog_data(entry: &Entry) -> Value {
    let item = &entry.item;
    json!({
        "class": item.class.name(),
        "compatibility": item.compatibility,
        "type": item.category.name(),
        "patternInfo": item.pattern_info.clone().unwrap_or_else(|| item.description.clone()),
        "patternCaveats": item.pattern_caveats.clone().unwrap_or_default(),
        "publishedVersion": item.version,
        "snapshotURL": [],
    })
}

fn read_text(entry: &Entry, rel: Option<&str>) -> anyhow::Result<String> {
    match rel {
        Some(rel) => {
            let path = entry.path(rel);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        }
        None => Ok(String::new()),
    }
}

fn meshery_item(entry: &Entry) -> anyhow::Result<Value> {
    let item = &entry.item;
    let id = item_uuid(entry);
    Ok(match item.kind {
        Kind::Pattern => {
            let spec = item.pattern.as_ref().expect("validated");
            json!({
                "id": id,
                "name": item.display_name,
                "patternFile": read_text(entry, Some(&spec.config))?,
                "catalogData": catalog_data(entry),
                "visibility": "published",
                "userId": "",
                "createdAt": created(entry),
                "updatedAt": created(entry),
                "designType": "design",
                "viewCount": 0, "downloadCount": 0, "cloneCount": 0, "deploymentCount": 0, "shareCount": 0,
            })
        }
        _ => json!({
            "id": id,
            "name": item.display_name,
            "filter_file": "",
            "filter_resource": read_text(entry, item.examples.first().map(String::as_str))?,
            "catalog_data": catalog_data(entry),
            "visibility": "published",
            "user_id": "",
            "created_at": created(entry),
            "updated_at": created(entry),
        }),
    })
}

/// One page of one kind, as Meshery's catalog API answers.
pub fn meshery_page(catalog: &Catalog, kind: Kind, q: &MesheryQuery) -> anyhow::Result<Value> {
    let mut entries: Vec<&Entry> = catalog
        .of_kind(kind)
        .filter(|e| q.category.is_none_or(|c| c == e.item.category))
        .filter(|e| q.technology.as_ref().is_none_or(|t| e.item.technology.iter().any(|x| x.eq_ignore_ascii_case(t))))
        .filter(|e| q.class.as_ref().is_none_or(|c| e.item.class.name().eq_ignore_ascii_case(c)))
        .filter(|e| {
            q.search.as_ref().is_none_or(|s| {
                let s = s.to_lowercase();
                e.item.name.contains(&s) || e.item.display_name.to_lowercase().contains(&s)
            })
        })
        .collect();
    match q.order.as_deref().unwrap_or("name asc") {
        "name asc" | "name" => entries.sort_by(|a, b| a.item.display_name.cmp(&b.item.display_name)),
        "name desc" => entries.sort_by(|a, b| b.item.display_name.cmp(&a.item.display_name)),
        other => anyhow::bail!("order {other:?} is not \"name asc\" or \"name desc\""),
    }
    let total = entries.len();
    let size = if q.page_size == 0 { total.max(1) } else { q.page_size };
    let page: Vec<Value> =
        entries.into_iter().skip(q.page * size).take(size).map(meshery_item).collect::<anyhow::Result<_>>()?;
    let key = match kind {
        Kind::Pattern => "patterns",
        Kind::Filter => "filters",
        Kind::Ebpf => "ebpf_programs",
        Kind::Policy => "policies",
    };
    Ok(json!({key: page, "page": q.page, "pageSize": size, "totalCount": total}))
}

/// The Artifact Hub package metadata of an item.
fn artifacthub_pkg(entry: &Entry, index: Option<&Index>, registry: Option<&str>) -> anyhow::Result<Value> {
    let item = &entry.item;
    let readme = read_text(entry, Some(&item.readme))?;
    let mut links: Vec<Value> = item.links.iter().map(|l| json!({"name": l.name, "url": l.url})).collect();
    if links.is_empty() {
        links.push(json!({"name": "source", "url": format!("{}/tree/main/catalog/{}/{}", crate::REPOSITORY, item.kind.dir(), item.name)}));
    }
    let mut pkg = json!({
        "version": item.version,
        "name": item.name,
        "displayName": item.display_name,
        "createdAt": created(entry),
        "description": item.description,
        "keywords": item.keywords,
        "license": item.license,
        "provider": {"name": item.provider.name},
        "links": links,
        "homeURL": item.home_url.clone().unwrap_or_else(|| crate::REPOSITORY.to_owned()),
        "readme": readme,
        "install": crate::site::install_text(entry, index, registry),
        "annotations": {
            "meshwork.io/kind": item.kind.name(),
            "meshwork.io/category": item.category.name(),
            "meshwork.io/compatibility": item.compatibility.join(","),
            "meshwork.io/technology": item.technology.join(","),
        },
    });
    if let (Some(registry), Some(built)) = (registry, index.and_then(|i| i.get(&item.id()))) {
        let images: Vec<Value> = built
            .oci
            .iter()
            .map(|(variant, o)| json!({"name": variant, "image": format!("{registry}/{}/{}:{}", item.kind.dir(), item.name, o.tag)}))
            .collect();
        pkg["containersImages"] = json!(images);
    }
    Ok(pkg)
}

/// Writes one Artifact Hub repository per kind under `out/<kind dir>/`.
pub fn artifacthub(
    catalog: &Catalog,
    index: Option<&Index>,
    registry: Option<&str>,
    out: &Path,
) -> anyhow::Result<usize> {
    let mut written = 0;
    for kind in Kind::ALL {
        let repo_dir = out.join(kind.dir());
        std::fs::create_dir_all(&repo_dir)?;
        let repo_meta = json!({"owners": [{"name": "meshwork"}]});
        std::fs::write(repo_dir.join("artifacthub-repo.yml"), yaml(&repo_meta)?)?;
        for entry in catalog.of_kind(kind) {
            let item = &entry.item;
            let dir = repo_dir.join(&item.name).join(&item.version);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("artifacthub-pkg.yml"), yaml(&artifacthub_pkg(entry, index, registry)?)?)?;
            std::fs::write(dir.join("README.md"), read_text(entry, Some(&item.readme))?)?;
            if let Some(p) = &item.pattern {
                std::fs::write(dir.join("design.yml"), read_text(entry, Some(&p.config))?)?;
            }
            if let Some(p) = &item.policy {
                std::fs::write(dir.join("policy.rego"), read_text(entry, Some(&p.rego))?)?;
            }
            for example in &item.examples {
                let name = Path::new(example).file_name().context("an example has a file name")?;
                std::fs::copy(entry.path(example), dir.join(name))?;
            }
            written += 1;
        }
    }
    Ok(written)
}

fn yaml(value: &Value) -> anyhow::Result<String> {
    serde_saphyr::to_string(value).map_err(|e| anyhow::anyhow!("writing YAML: {e}"))
}
