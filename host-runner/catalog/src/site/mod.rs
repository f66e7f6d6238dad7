//! `catalog site`: a static web page of the catalog. Cards filter client-side by kind, category,
//! compatibility, technology and text; each item has a page with its README, configuration,
//! pull and deploy commands, digests, signature and conformance status; four playground pages
//! run the patterns' decision code (compiled with wasm-bindgen) in the browser. Every asset is
//! local: the site makes no request to another host.

use std::path::{Path, PathBuf};

use anyhow::Context;
use minijinja::{Environment, context};
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};
use serde::Serialize;

use crate::build::Index;
use crate::item::{COMPATIBILITY, Category, Kind, TECHNOLOGY};
use crate::load::{Catalog, Entry};
use crate::publish::{Published, PublishedItem, repository};

const TEMPLATES: [(&str, &str); 4] = [
    ("base.html", include_str!("templates/base.html")),
    ("index.html", include_str!("templates/index.html")),
    ("item.html", include_str!("templates/item.html")),
    ("playground.html", include_str!("templates/playground.html")),
];
const ASSETS: [(&str, &str); 3] = [
    ("site.css", include_str!("assets/site.css")),
    ("catalog.js", include_str!("assets/catalog.js")),
    ("playground.js", include_str!("assets/playground.js")),
];
/// The wasm-bindgen output the playground pages load (`make playground` builds it).
pub const PLAYGROUND_FILES: [&str; 2] = ["meshwork_playground.js", "meshwork_playground_bg.wasm"];

pub struct SiteOptions {
    pub out: PathBuf,
    /// What `build` made (digests); without it item pages say "not built".
    pub index: Option<Index>,
    /// What `publish` pushed (references, signatures).
    pub published: Option<Published>,
    /// The wasm-bindgen output directory of the playground.
    pub playground: Option<PathBuf>,
    /// A `meshwork conformance matrix` output directory: its matrix.html becomes the site's
    /// conformance page, linked from every page.
    pub conformance: Option<PathBuf>,
}

pub struct SiteReport {
    pub pages: usize,
    pub playground: bool,
}

#[derive(Serialize)]
struct Card {
    id: String,
    href: String,
    name: String,
    display_name: String,
    kind: &'static str,
    kind_title: &'static str,
    category: &'static str,
    compatibility: Vec<String>,
    technology: Vec<String>,
    description: String,
    version: String,
    keywords: Vec<String>,
}

fn card(entry: &Entry) -> Card {
    let item = &entry.item;
    Card {
        id: item.id(),
        href: format!("{}/{}.html", item.kind.dir(), item.name),
        name: item.name.clone(),
        display_name: item.display_name.clone(),
        kind: item.kind.name(),
        kind_title: item.kind.title(),
        category: item.category.name(),
        compatibility: item.compatibility.clone(),
        technology: item.technology.clone(),
        description: item.description.clone(),
        version: item.version.clone(),
        keywords: item.keywords.clone(),
    }
}

/// A README as HTML; links relative to the repository point at its source on the web.
pub fn markdown(text: &str, base: &Path, repo: &Path) -> String {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let parser = Parser::new_ext(text, options).map(|event| match event {
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Link { link_type, dest_url: rewrite_link(&dest_url, base, repo), title, id })
        }
        // No image may load from elsewhere: they become links.
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Link { link_type, dest_url: rewrite_link(&dest_url, base, repo), title, id })
        }
        Event::End(pulldown_cmark::TagEnd::Image) => Event::End(pulldown_cmark::TagEnd::Link),
        // Raw HTML in a README is shown, not run.
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        other => other,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

fn rewrite_link<'a>(dest: &CowStr<'a>, base: &Path, repo: &Path) -> CowStr<'a> {
    if dest.contains("://") || dest.starts_with('#') || dest.starts_with("mailto:") {
        return dest.clone();
    }
    let (path, anchor) = dest.split_once('#').map(|(p, a)| (p, format!("#{a}"))).unwrap_or((dest, String::new()));
    let full = crate::load::normalize(&base.join(path));
    let rel = full.strip_prefix(crate::load::normalize(repo)).unwrap_or(&full);
    CowStr::from(format!("{}/blob/main/{}{anchor}", crate::REPOSITORY, rel.display()))
}

/// The commands that pull and deploy an item (also Artifact Hub's `install`).
pub fn install_text(entry: &Entry, index: Option<&Index>, registry: Option<&str>) -> String {
    let item = &entry.item;
    let registry = registry.unwrap_or("REGISTRY");
    let repo = repository(registry, item.kind, &item.name);
    let built = index.and_then(|i| i.get(&item.id()));
    let digest_hex = |variant: &str| {
        built
            .and_then(|b| b.oci.get(variant))
            .map(|o| o.digest.trim_start_matches("sha256:").to_owned())
            .unwrap_or_else(|| "<manifest digest>".to_owned())
    };
    match item.kind {
        Kind::Filter => {
            let root_id = item.filter.as_ref().and_then(|f| f.root_id.clone());
            format!(
                "# Pull the module (digest-checked; add --key meshwork.pub to require a signature)\n\
                 meshwork catalog pull {repo}:{v} --out {n}.wasm\n\n\
                 # Or run it straight from the registry: in meshwork.yaml\n\
                 filters:\n  - name: {n}\n    module: oci://{repo}:{v}\n    sha256: {d}\n{root}\n\
                 # Istio\n\
                 apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: {n}\nspec:\n  url: oci://{repo}:{v}\n  sha256: {d}\n{plugin_name}  phase: STATS\n  pluginConfig: {{}}\n",
                n = item.name,
                v = item.version,
                d = digest_hex("compat"),
                root = root_id.as_ref().map(|r| format!("    root_id: {r}\n")).unwrap_or_default(),
                plugin_name = root_id.as_ref().map(|r| format!("  pluginName: {r}\n")).unwrap_or_default(),
            )
        }
        Kind::Ebpf => {
            let spec = item.ebpf.as_ref().expect("validated");
            format!(
                "# Pull the object (a bpfman bytecode image: bpfman loads it by URL too)\n\
                 meshwork catalog pull {repo}:{v} --out {p}.o\n\n# Load it (needs {caps})\n{load}\n",
                v = item.version,
                p = spec.program,
                caps = spec.capabilities.join(", "),
                load = spec.load,
            )
        }
        Kind::Pattern => {
            let config = item.pattern.as_ref().map(|p| p.config.clone()).unwrap_or_default();
            format!(
                "# Pull the pattern (its configuration names the filters by registry digest)\n\
                 meshwork catalog pull {repo}:{v} --out {n}/\n\nmeshwork run --config {n}/{config}\n",
                n = item.name,
                v = item.version,
            )
        }
        Kind::Policy => format!(
            "# The catalog's policies run over any configuration\n\
             meshwork catalog check-policy my-config.yaml\n\n# Or pull this one\nmeshwork catalog pull {repo}:{v} --out {n}/\n",
            n = item.name,
            v = item.version,
        ),
    }
}

#[derive(Serialize)]
struct Digest {
    variant: String,
    reference: String,
    digest: String,
}

#[derive(Serialize)]
struct ConformanceRow {
    mesh: String,
    status: String,
}

pub fn render(catalog: &Catalog, options: &SiteOptions) -> anyhow::Result<SiteReport> {
    let mut env = Environment::new();
    for (name, text) in TEMPLATES {
        env.add_template(name, text).with_context(|| format!("template {name}"))?;
    }
    let out = &options.out;
    std::fs::create_dir_all(out.join("assets")).with_context(|| format!("creating {}", out.display()))?;
    for (name, text) in ASSETS {
        std::fs::write(out.join("assets").join(name), text)?;
    }
    let mut playground = false;
    if let Some(dir) = &options.playground {
        for f in PLAYGROUND_FILES {
            let from = dir.join(f);
            std::fs::copy(&from, out.join("assets").join(f))
                .with_context(|| format!("copying {} (run `make playground`)", from.display()))?;
        }
        playground = true;
    }

    if let Some(dir) = &options.conformance {
        let from = dir.join("matrix.html");
        std::fs::copy(&from, out.join("conformance.html"))
            .with_context(|| format!("copying {} (run `meshwork conformance matrix`)", from.display()))?;
    }
    env.add_global("conformance", options.conformance.is_some());

    let cards: Vec<Card> = catalog.entries.iter().map(card).collect();
    let categories: Vec<&str> = Category::ALL
        .iter()
        .filter(|c| catalog.entries.iter().any(|e| e.item.category == **c))
        .map(|c| c.name())
        .collect();
    let kinds: Vec<(&str, &str)> = Kind::ALL.iter().map(|k| (k.name(), k.title())).collect();
    let mut pages = 0;
    let index = env.get_template("index.html")?.render(context! {
        root => ".",
        title => "meshwork catalog",
        cards => cards,
        kinds => kinds,
        categories => categories,
        compatibility => COMPATIBILITY,
        technology => TECHNOLOGY,
        playgrounds => meshwork_playground::PLAYGROUNDS,
    })?;
    std::fs::write(out.join("index.html"), index)?;
    pages += 1;

    let item_template = env.get_template("item.html")?;
    for entry in &catalog.entries {
        let item = &entry.item;
        let readme_path = entry.path(&item.readme);
        let readme =
            std::fs::read_to_string(&readme_path).with_context(|| format!("reading {}", readme_path.display()))?;
        let readme_html = markdown(&readme, readme_path.parent().unwrap_or(Path::new(".")), &catalog.repo);
        let mut configs: Vec<(String, String)> = Vec::new();
        let mut config_files: Vec<&str> = item.examples.iter().map(String::as_str).collect();
        if let Some(p) = &item.pattern {
            config_files.insert(0, &p.config);
            config_files.extend(p.envoy.as_deref());
        }
        if let Some(p) = &item.policy {
            config_files.insert(0, &p.rego);
        }
        for rel in config_files {
            let path = entry.path(rel);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            configs.push((path.file_name().unwrap_or_default().to_string_lossy().into_owned(), text));
        }
        let built = options.index.as_ref().and_then(|i| i.get(&item.id()));
        let published = options.published.as_ref().and_then(|p| p.items.get(&item.id()));
        let digests: Vec<Digest> = match (published, built) {
            (Some(p), _) => p
                .references
                .iter()
                .map(|(v, r)| Digest { variant: v.clone(), reference: r.reference.clone(), digest: r.digest.clone() })
                .collect(),
            (None, Some(b)) => b
                .oci
                .iter()
                .map(|(v, o)| Digest {
                    variant: v.clone(),
                    reference: format!("(not published) :{}", o.tag),
                    digest: o.digest.clone(),
                })
                .collect(),
            (None, None) => Vec::new(),
        };
        let signature = match published {
            Some(PublishedItem { signed_by: Some(k), .. }) => {
                format!("signed (cosign-compatible, ECDSA P-256 key {k})")
            }
            Some(_) => "published unsigned".to_owned(),
            None => "not published".to_owned(),
        };
        let conformance: Vec<ConformanceRow> = item
            .compatibility
            .iter()
            .map(|mesh| ConformanceRow {
                mesh: mesh.clone(),
                status: if item.conformance.is_empty() {
                    "no results yet".into()
                } else {
                    format!("{} result file(s)", item.conformance.len())
                },
            })
            .collect();
        let registry = options.published.as_ref().map(|p| p.registry.as_str());
        let page = item_template.render(context! {
            root => "..",
            title => format!("{} — meshwork catalog", item.display_name),
            item => item,
            card => card(entry),
            class => item.class.name(),
            category => item.category.name(),
            readme_html => readme_html,
            configs => configs,
            install => install_text(entry, options.index.as_ref(), registry),
            sha256 => built.map(|b| b.sha256.clone()),
            size => built.map(|b| b.size),
            artifact => built.map(|b| b.file.clone()),
            digests => digests,
            signature => signature,
            conformance => conformance,
            playground => item.filter.as_ref().and_then(|f| f.playground.clone()),
        })?;
        let dir = out.join(item.kind.dir());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{}.html", item.name)), page)?;
        pages += 1;
    }

    let pg_template = env.get_template("playground.html")?;
    std::fs::create_dir_all(out.join("playground"))?;
    for pg in meshwork_playground::PLAYGROUNDS {
        let used_by: Vec<Card> = catalog
            .of_kind(Kind::Filter)
            .filter(|e| e.item.filter.as_ref().and_then(|f| f.playground.as_deref()) == Some(pg.name))
            .map(card)
            .collect();
        let page = pg_template.render(context! {
            root => "..",
            title => format!("{} playground — meshwork catalog", pg.title),
            pg => pg,
            traffic => pg.params.iter().filter(|p| p.traffic).collect::<Vec<_>>(),
            config => pg.params.iter().filter(|p| !p.traffic).collect::<Vec<_>>(),
            used_by => used_by,
            available => playground,
        })?;
        std::fs::write(out.join("playground").join(format!("{}.html", pg.name)), page)?;
        pages += 1;
    }
    Ok(SiteReport { pages, playground })
}
