//! `meshwork catalog`: list, search, show, validate, build, export, publish, pull, verify,
//! keygen, site and check-policy over `catalog/` (meshwork-catalog and meshwork-oci do the work).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use meshwork_catalog::build::{BuildOptions, Index, build_all};
use meshwork_catalog::export::{self, MesheryQuery};
use meshwork_catalog::item::{Category, Kind};
use meshwork_catalog::policy::{self, PolicySet};
use meshwork_catalog::publish::{self, PublishOptions, Published, Pulled};
use meshwork_catalog::query::Query;
use meshwork_catalog::site::{self, SiteOptions};
use meshwork_catalog::{Catalog, Entry};
use meshwork_oci::registry::{Auth, RegistryOptions};
use meshwork_oci::sign::{self, SigningKey, VerifyingKey};

use crate::OutputFormat;

#[derive(Args)]
pub struct CatalogArgs {
    /// The catalog directory (default: $MESHWORK_CATALOG, else ./catalog, else the one in the
    /// checkout this binary was built in).
    #[arg(long, global = true)]
    catalog: Option<PathBuf>,
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Args, Clone, Default)]
pub struct Filters {
    /// pattern, filter, ebpf or policy.
    #[arg(long)]
    kind: Option<String>,
    /// A Meshery category: Resiliency, Observability, Security, Traffic-management, …
    #[arg(long)]
    category: Option<String>,
    /// A target the item must run on (repeatable: all must match).
    #[arg(long)]
    compatibility: Vec<String>,
    /// webassembly, ebpf, opa, meshwork.
    #[arg(long)]
    technology: Option<String>,
}

/// How to reach a registry.
#[derive(Args, Clone, Default)]
pub struct RegistryArgs {
    /// Registry user (with --password-stdin); otherwise MESHWORK_REGISTRY_USERNAME/PASSWORD or
    /// MESHWORK_REGISTRY_TOKEN, else the docker config.json entry, else anonymous.
    #[arg(long)]
    username: Option<String>,
    /// Read the password (or, without --username, a bearer token) from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Speak plain HTTP to this registry (host:port; repeatable). Loopback registries always are.
    #[arg(long = "plain-http", value_name = "REGISTRY")]
    plain_http: Vec<String>,
}

impl RegistryArgs {
    pub fn options(&self) -> anyhow::Result<RegistryOptions> {
        let auth = if self.password_stdin {
            let mut secret = String::new();
            std::io::stdin().read_to_string(&mut secret).context("reading the password from standard input")?;
            let secret = secret.trim_end_matches(['\r', '\n']).to_owned();
            match &self.username {
                Some(username) => Auth::Basic { username: username.clone(), password: secret },
                None => Auth::Bearer(secret),
            }
        } else {
            anyhow::ensure!(self.username.is_none(), "--username needs --password-stdin");
            Auth::Auto
        };
        Ok(RegistryOptions { auth, plain_http: self.plain_http.clone() })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Meshery,
    Artifacthub,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// List items, optionally filtered.
    List {
        #[command(flatten)]
        filters: Filters,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Items whose name, description or keywords contain every word of TEXT.
    Search {
        text: String,
        #[command(flatten)]
        filters: Filters,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// One item's metadata (kind/name, or name when unambiguous).
    Show {
        item: String,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Check every item: schema, values, files, references, and each policy's own examples.
    Validate,
    /// Build every item's artifact and record sha256s and OCI manifest digests in index.json.
    Build {
        #[command(flatten)]
        build: BuildArgs,
        #[arg(long, default_value = "target/catalog")]
        out: PathBuf,
    },
    /// Meshery's catalog page (JSON on stdout) or an Artifact Hub repository (--out).
    Export {
        #[arg(value_enum)]
        format: ExportFormat,
        /// meshery: pattern, filter, ebpf or policy (Meshery's content type).
        #[arg(long, default_value = "pattern")]
        content: String,
        #[arg(long, default_value_t = 0)]
        page: usize,
        /// 0: everything on one page.
        #[arg(long, default_value_t = 0)]
        page_size: usize,
        #[arg(long)]
        search: Option<String>,
        /// "name asc" or "name desc".
        #[arg(long)]
        order: Option<String>,
        /// Meshery's `type`: a category.
        #[arg(long = "type")]
        category: Option<String>,
        #[arg(long)]
        technology: Option<String>,
        #[arg(long)]
        class: Option<String>,
        /// artifacthub: the directory to write.
        #[arg(long)]
        out: Option<PathBuf>,
        /// artifacthub: the registry items were published to (for containersImages).
        #[arg(long)]
        registry: Option<String>,
        /// index.json from `catalog build` (digests for install instructions).
        #[arg(long, default_value = "target/catalog/index.json")]
        index: PathBuf,
    },
    /// Push items to an OCI registry (REGISTRY is host[:port][/prefix]); all of them by default.
    Publish {
        #[arg(long)]
        registry: String,
        items: Vec<String>,
        /// Sign every pushed manifest with this PKCS#8 PEM key (cosign-compatible signatures).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// Also push filters in the CNCF TAG-Runtime form (`application/wasm`, tag <version>-wasm).
        #[arg(long)]
        tag_runtime: bool,
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        registry_args: RegistryArgs,
        /// Where to record what was pushed (the site reads it).
        #[arg(long, default_value = "target/catalog/published.json")]
        record: PathBuf,
    },
    /// Pull an artifact: a filter's module, an eBPF object, or a pattern's or policy's files.
    Pull {
        reference: String,
        /// A file for modules and objects, a directory for bundles (default: named after it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Refuse it unless a signature verifies with this public key.
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        registry_args: RegistryArgs,
    },
    /// Check an artifact's signature and every blob's digest.
    Verify {
        reference: String,
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        registry_args: RegistryArgs,
    },
    /// Make an ECDSA P-256 key pair: PREFIX.key (PKCS#8, mode 0600) and PREFIX.pub.
    Keygen {
        #[arg(long, default_value = "meshwork")]
        prefix: PathBuf,
    },
    /// Render the static web site.
    Site {
        #[arg(long)]
        out: PathBuf,
        /// index.json from `catalog build` (built now from --filters/--ebpf when absent).
        #[arg(long, default_value = "target/catalog/index.json")]
        index: PathBuf,
        /// published.json from `catalog publish`, if any.
        #[arg(long, default_value = "target/catalog/published.json")]
        published: PathBuf,
        /// The playground's wasm-bindgen output (`make playground`).
        #[arg(long)]
        playground: Option<PathBuf>,
        /// A `meshwork conformance matrix` output directory, linked as the conformance page.
        #[arg(long, value_name = "DIR")]
        conformance: Option<PathBuf>,
    },
    /// Run the catalog's Rego policies over configuration files; violations name their paths.
    CheckPolicy {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Args, Clone)]
pub struct BuildArgs {
    /// Built filters (`make filters`).
    #[arg(long, default_value = "target/filters")]
    filters: PathBuf,
    /// Built eBPF objects (`make ebpf`).
    #[arg(long, default_value = "target/ebpf")]
    ebpf: PathBuf,
}

impl BuildArgs {
    fn options(&self) -> BuildOptions {
        BuildOptions { filters_dir: self.filters.clone(), ebpf_dir: self.ebpf.clone() }
    }
}

pub(crate) fn catalog_dir(given: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = given.or_else(|| std::env::var_os("MESHWORK_CATALOG").map(PathBuf::from)) {
        return dir;
    }
    let here = PathBuf::from("catalog");
    if here.is_dir() {
        return here;
    }
    // target/release/meshwork → the checkout's catalog/.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.parent().map(|repo| repo.join("catalog")))
        .filter(|d| d.is_dir())
        .unwrap_or(here)
}

pub(crate) fn load(dir: &Path) -> anyhow::Result<Catalog> {
    Catalog::load(dir).map_err(|problems| anyhow::anyhow!("the catalog is not valid:\n{problems}"))
}

fn query(filters: &Filters, text: Option<String>) -> anyhow::Result<Query> {
    Ok(Query {
        kind: filters.kind.as_deref().map(Kind::parse).transpose()?,
        category: filters.category.as_deref().map(Category::parse).transpose()?,
        compatibility: filters.compatibility.clone(),
        technology: filters.technology.clone(),
        text,
    })
}

fn print_entries(entries: &[&Entry], output: OutputFormat) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => {
            let items: Vec<_> = entries.iter().map(|e| &e.item).collect();
            println!("{}", serde_json::to_string_pretty(&items)?);
        }
        OutputFormat::Text => {
            for e in entries {
                let i = &e.item;
                println!(
                    "{:<30} {:<8} {:<19} {:<40} {}",
                    i.id(),
                    i.version,
                    i.category.name(),
                    i.compatibility.join(","),
                    i.display_name
                );
            }
            if entries.is_empty() {
                eprintln!("no item matches");
            }
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn read_key<T>(path: &Path, parse: impl FnOnce(&[u8]) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let text = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
    parse(&text).with_context(|| format!("key {}", path.display()))
}

pub fn run(args: CatalogArgs) -> anyhow::Result<ExitCode> {
    let dir = catalog_dir(args.catalog);
    match args.command {
        CatalogCommand::List { filters, output } => {
            let catalog = load(&dir)?;
            print_entries(&query(&filters, None)?.run(&catalog.entries), output)?;
        }
        CatalogCommand::Search { text, filters, output } => {
            let catalog = load(&dir)?;
            let found = query(&filters, Some(text))?.run(&catalog.entries);
            print_entries(&found, output)?;
            if found.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        CatalogCommand::Show { item, output } => {
            let catalog = load(&dir)?;
            let entry = catalog.get(&item)?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&entry.item)?),
                OutputFormat::Text => {
                    print!("{}", serde_saphyr::to_string(&entry.item).map_err(|e| anyhow::anyhow!("{e}"))?);
                    println!("# directory: {}", entry.dir.display());
                }
            }
        }
        CatalogCommand::Validate => {
            let catalog = load(&dir)?;
            let problems = policy::self_test(&catalog);
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{p}");
                }
                anyhow::bail!("{} problem(s) in the catalog's policies", problems.len());
            }
            let count = |k: Kind| catalog.of_kind(k).count();
            println!(
                "{}: {} items valid ({} patterns, {} filters, {} eBPF programs, {} policies)",
                dir.display(),
                catalog.entries.len(),
                count(Kind::Pattern),
                count(Kind::Filter),
                count(Kind::Ebpf),
                count(Kind::Policy)
            );
        }
        CatalogCommand::Build { build, out } => {
            let catalog = load(&dir)?;
            let start = std::time::Instant::now();
            let (index, _) = build_all(&catalog, &build.options(), &out)?;
            for e in &index.items {
                println!("{:<30} {:>9} bytes  {}", e.id, e.size, e.sha256);
            }
            println!(
                "built {} artifacts into {} in {} ms (index.json has their OCI manifest digests)",
                index.items.len(),
                out.display(),
                start.elapsed().as_millis()
            );
        }
        CatalogCommand::Export {
            format,
            content,
            page,
            page_size,
            search,
            order,
            category,
            technology,
            class,
            out,
            registry,
            index,
        } => {
            let catalog = load(&dir)?;
            match format {
                ExportFormat::Meshery => {
                    let q = MesheryQuery {
                        page,
                        page_size,
                        search,
                        order,
                        category: category.as_deref().map(Category::parse).transpose()?,
                        technology,
                        class,
                    };
                    let page = export::meshery_page(&catalog, Kind::parse(&content)?, &q)?;
                    println!("{}", serde_json::to_string_pretty(&page)?);
                }
                ExportFormat::Artifacthub => {
                    let out = out.context("artifacthub export needs --out DIR")?;
                    let index = index.is_file().then(|| Index::read(&index)).transpose()?;
                    let n = export::artifacthub(&catalog, index.as_ref(), registry.as_deref(), &out)?;
                    println!("wrote {n} packages as Artifact Hub repositories under {}", out.display());
                }
            }
        }
        CatalogCommand::Publish { registry, items, sign, tag_runtime, build, registry_args, record } => {
            let catalog = load(&dir)?;
            let entries: Vec<&Entry> = if items.is_empty() {
                catalog.entries.iter().collect()
            } else {
                items.iter().map(|i| catalog.get(i)).collect::<anyhow::Result<_>>()?
            };
            let options = PublishOptions {
                registry: registry.trim_start_matches("oci://").to_owned(),
                registry_options: registry_args.options()?,
                sign: sign.as_deref().map(|k| read_key(k, SigningKey::from_pem)).transpose()?,
                tag_runtime,
            };
            let start = std::time::Instant::now();
            let published =
                runtime()?.block_on(publish::publish(&catalog, &entries, &build.options(), &options, |line| {
                    println!("{line}")
                }))?;
            let references: usize = published.items.values().map(|i| i.references.len()).sum();
            if let Some(parent) = record.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&record, serde_json::to_vec_pretty(&published)?)?;
            println!(
                "published {} items as {references} artifacts to {}{} in {} ms; record in {}",
                published.items.len(),
                options.registry,
                if options.sign.is_some() { ", signed" } else { "" },
                start.elapsed().as_millis(),
                record.display()
            );
        }
        CatalogCommand::Pull { reference, out, key, registry_args } => {
            let key = key.as_deref().map(|k| read_key(k, VerifyingKey::from_pem)).transpose()?;
            let options = registry_args.options()?;
            let (digest, pulled) = runtime()?.block_on(publish::pull(&reference, &options, key.as_ref()))?;
            let default_name = reference
                .rsplit('/')
                .next()
                .unwrap_or("artifact")
                .split([':', '@'])
                .next()
                .unwrap_or("artifact")
                .to_owned();
            let out = out.unwrap_or_else(|| {
                PathBuf::from(match &pulled {
                    Pulled::Wasm(_) => format!("{default_name}.wasm"),
                    Pulled::Ebpf { file_name, .. } => file_name.clone(),
                    Pulled::Bundle { .. } => default_name.clone(),
                })
            });
            let written = publish::write_pulled(&pulled, &out)?;
            let what = match &pulled {
                Pulled::Wasm(m) => format!("Wasm module, {} bytes", m.len()),
                Pulled::Ebpf { object, annotations, .. } => format!(
                    "eBPF object, {} bytes, program types {}, attach {}",
                    object.len(),
                    annotations.get(meshwork_oci::media::EBPF_PROGRAM_TYPES).map(String::as_str).unwrap_or("?"),
                    annotations.get(meshwork_oci::media::EBPF_ATTACH).map(String::as_str).unwrap_or("?")
                ),
                Pulled::Bundle { kind, files } => format!("{} bundle, {} files", kind.name(), files.len()),
            };
            println!(
                "pulled {reference}@{digest}: {what}{} -> {}",
                if key.is_some() { ", signature verified" } else { "" },
                if written.len() == 1 { written[0].display().to_string() } else { out.display().to_string() }
            );
        }
        CatalogCommand::Verify { reference, key, registry_args } => {
            let key = read_key(&key, VerifyingKey::from_pem)?;
            let options = registry_args.options()?;
            let v = runtime()?.block_on(publish::verify(&reference, &options, &key))?;
            println!(
                "verified {}@{}: signed with key {}; manifest and {} blobs match their digests",
                v.reference, v.digest, v.key, v.blobs
            );
        }
        CatalogCommand::Keygen { prefix } => {
            let key_path = prefix.with_extension("key");
            let pub_path = prefix.with_extension("pub");
            for p in [&key_path, &pub_path] {
                anyhow::ensure!(!p.exists(), "{} exists; not overwriting a key", p.display());
            }
            let (private, public) = sign::keygen()?;
            write_private(&key_path, private.as_bytes())?;
            std::fs::write(&pub_path, public)?;
            println!("wrote {} (keep it secret) and {}", key_path.display(), pub_path.display());
        }
        CatalogCommand::Site { out, index, published, playground, conformance } => {
            let catalog = load(&dir)?;
            let start = std::time::Instant::now();
            let index = if index.is_file() { Some(Index::read(&index)?) } else { None };
            let published = if published.is_file() { Some(Published::read(&published)?) } else { None };
            let report =
                site::render(&catalog, &SiteOptions { out: out.clone(), index, published, playground, conformance })?;
            println!(
                "site written to {} ({} pages{}) in {} ms; serve it over HTTP, e.g. python3 -m http.server -d {}",
                out.display(),
                report.pages,
                if report.playground { ", with the playground" } else { ", without the playground" },
                start.elapsed().as_millis(),
                out.display()
            );
        }
        CatalogCommand::CheckPolicy { files, output } => {
            let catalog = load(&dir)?;
            let mut policies = PolicySet::load(&catalog)?;
            let mut all = Vec::new();
            for file in &files {
                let docs = policy::read_documents(file)?;
                for (n, doc) in docs.iter().enumerate() {
                    for v in policies.check(doc, n).with_context(|| file.display().to_string())? {
                        all.push((file.clone(), docs.len() > 1, v));
                    }
                }
            }
            match output {
                OutputFormat::Json => {
                    let json: Vec<_> = all
                        .iter()
                        .map(|(f, _, v)| {
                            serde_json::json!({"file": f, "document": v.document, "path": v.path, "msg": v.msg, "policy": v.policy})
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&json)?);
                }
                OutputFormat::Text => {
                    for (f, multi, v) in &all {
                        let doc = if *multi { format!("[document {}]", v.document) } else { String::new() };
                        println!("{}{doc}: {}: {} ({})", f.display(), v.path, v.msg, v.policy);
                    }
                    if all.is_empty() {
                        println!("no violations ({} policies)", policies.names().len());
                    }
                }
            }
            if !all.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}
