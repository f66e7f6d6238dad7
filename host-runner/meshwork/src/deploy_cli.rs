//! `meshwork deploy`: a catalog item as the configuration a mesh accepts — Envoy, Istio,
//! Envoy Gateway, Consul, Kuma or meshwork documents (meshwork-deploy renders and validates
//! them), with each filter's configuration checked by starting the filter once; eBPF items as
//! the DaemonSet that loads them; `--apply` sends them to a cluster (server-side apply).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use meshwork_catalog::item::Kind;
use meshwork_catalog::publish::Published;
use meshwork_catalog::{Catalog, Entry};
use meshwork_deploy::{Document, ExtraCluster, Fail, FilterSpec, Mesh, Module, Options, TargetRef};
use serde_json::Value;

use crate::catalog_cli::{catalog_dir, load};

#[derive(Args)]
pub struct DeployArgs {
    /// A catalog item: `filter/retry`, `pattern/resilient-upstream`, `ebpf/xdp-ratelimit` (or
    /// just its name).
    #[arg(required_unless_present = "validate")]
    item: Option<String>,
    #[arg(long, value_enum, default_value = "istio")]
    mesh: Mesh,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Workload labels the filters apply to (Istio `selector`): `app=frontend` (repeatable).
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    selector: Vec<String>,
    /// What the policy attaches to: `KIND/NAME` or `GROUP/KIND/NAME` (repeatable).
    #[arg(long = "target-ref", value_name = "[GROUP/]KIND/NAME")]
    target_refs: Vec<String>,
    /// The published OCI image of a filter item (`registry/repo:tag`, `@sha256:` pins it).
    #[arg(long, conflicts_with_all = ["file", "url"])]
    image: Option<String>,
    /// The module on the proxy's disk: a file for a filter item, a directory of `<filter>.wasm`
    /// for a pattern.
    #[arg(long, conflicts_with = "url")]
    file: Option<PathBuf>,
    /// Where the proxy downloads modules: `https://host/path/` + `<filter>.wasm`.
    #[arg(long)]
    url: Option<String>,
    /// `catalog publish`'s record: every filter as the image it was published as (by digest).
    #[arg(long, value_name = "published.json")]
    published: Option<PathBuf>,
    /// What the proxy does when a filter cannot run.
    #[arg(long, value_enum, default_value = "closed")]
    fail: FailArg,
    /// A filter item's whole configuration (JSON or YAML, inline or a file) instead of its
    /// example's; --values and --set then apply to it.
    #[arg(long)]
    configuration: Option<String>,
    /// Change the configuration: `key.sub=value` (a pattern's filters: `plugin.key=value`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// A YAML/JSON file merged into the configuration (a pattern's: keyed by plugin name).
    #[arg(long)]
    values: Option<PathBuf>,
    /// The Consul service the service-defaults are for.
    #[arg(long, default_value = "app")]
    service: String,
    /// Istio phase for the plugins (AUTHN, AUTHZ, STATS); chain order becomes priority.
    #[arg(long)]
    phase: Option<String>,
    /// The address of a cluster the filters call out to, `ratelimit=10.0.0.5:8081`
    /// (repeatable; default: the address in the item's example).
    #[arg(long = "cluster", value_name = "NAME=HOST:PORT")]
    clusters: Vec<String>,
    /// For full bootstraps and meshwork configs: the listener and the upstream.
    #[arg(long, default_value = "0.0.0.0:10000")]
    listen: String,
    #[arg(long, default_value = "127.0.0.1:8080")]
    upstream: String,
    /// eBPF items: the container image with the meshwork binary, and where programs attach.
    #[arg(long, default_value = "ghcr.io/meshwork/meshwork:0.1.0")]
    ebpf_image: String,
    #[arg(long, default_value = "eth0")]
    iface: String,
    /// eBPF items: the program's configuration (inline YAML/JSON), as `meshwork ebpf load
    /// --config` takes it; xdp-ratelimit needs one (`{rate: 1000, burst: 2000}`).
    #[arg(long)]
    ebpf_config: Option<String>,
    #[arg(long, value_enum, default_value = "yaml")]
    output: DeployOutput,
    /// Do not start each filter once with its configuration before writing.
    #[arg(long)]
    no_check: bool,
    /// Check configurations someone wrote (YAML, JSON, multi-document) instead of generating.
    #[arg(long, value_name = "FILE")]
    validate: Option<PathBuf>,
    /// Apply to the cluster of the current kubeconfig context (or in-cluster config).
    #[arg(long)]
    apply: bool,
    /// With --apply: `server` validates and admits without storing.
    #[arg(long, value_name = "server")]
    dry_run: Option<String>,
    /// With --apply: remove the documents' objects instead.
    #[arg(long)]
    delete: bool,
    /// With --apply: seconds to wait for kinds that report acceptance.
    #[arg(long, default_value_t = 30)]
    wait: u64,
    #[arg(long)]
    catalog: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FailArg {
    Open,
    Closed,
    Reload,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DeployOutput {
    Yaml,
    Json,
    /// Consul's config-entry HCL.
    Hcl,
}

/// A filter of the item: its module's name in target/filters, its deploy spec.
struct Planned {
    module_name: String,
    spec: FilterSpec,
}

pub fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    if let Some(file) = &args.validate {
        return validate_file(file);
    }
    let catalog = load(&catalog_dir(args.catalog.clone()))?;
    let id = args.item.as_deref().unwrap_or_default();
    let entry = catalog.get(id)?;
    let docs: Vec<Document> = match entry.item.kind {
        Kind::Ebpf => vec![ebpf_daemonset(entry, &args)?],
        Kind::Filter | Kind::Pattern => {
            let (planned, clusters) = plan(&catalog, entry, &args)?;
            if !args.no_check {
                check_filters(&planned, &clusters)?;
            }
            let options = options(&args, clusters)?;
            let specs: Vec<FilterSpec> = planned.into_iter().map(|p| p.spec).collect();
            meshwork_deploy::render::render(args.mesh, &specs, &options)
                .with_context(|| format!("{} for {:?}", entry.item.id(), args.mesh))?
        }
        Kind::Policy => bail!("{} is a policy: `meshwork catalog check-policy` runs it", entry.item.id()),
    };
    // Nothing leaves that its schema refuses.
    let problems: Vec<String> = docs
        .iter()
        .flat_map(meshwork_deploy::validate::validate)
        .map(|p| format!("{}: {}: {}", p.document, p.path, p.reason))
        .collect();
    if !problems.is_empty() {
        bail!("the generated documents do not validate (a meshwork bug; please report it):\n{}", problems.join("\n"));
    }
    // YAML carries the notes as comments; other forms get them on standard error.
    if args.output != DeployOutput::Yaml || args.apply || args.delete {
        for (doc, note) in docs.iter().flat_map(|d| d.notes.iter().map(move |n| (d, n))) {
            eprintln!("note: {} {}: {note}", doc.kind, doc.name);
        }
    }
    if args.apply || args.delete {
        return apply(&args, &docs);
    }
    match args.output {
        DeployOutput::Yaml => print!("{}", meshwork_deploy::render::to_yaml(&docs)),
        DeployOutput::Json => println!("{}", meshwork_deploy::render::to_json(&docs)),
        DeployOutput::Hcl => {
            let texts: Vec<&str> = docs.iter().filter_map(|d| d.text.as_deref()).collect();
            if texts.is_empty() {
                bail!("--output hcl is Consul's config-entry form; use it with --mesh consul");
            }
            println!("{}", texts.join("\n\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate_file(file: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let checked = meshwork_deploy::validate::validate_text(&text).with_context(|| file.display().to_string())?;
    let mut bad = 0;
    for (doc, problems) in &checked {
        if problems.is_empty() {
            println!("ok: {} {}", doc.kind, doc.name);
        }
        for p in problems {
            bad += 1;
            eprintln!("{}: {}: {}: {}", file.display(), p.document, p.path, p.reason);
        }
    }
    if bad > 0 {
        bail!("{bad} problem(s) in {}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The filters of a filter or pattern item with their configurations (the item's example or
/// pattern config, then --values, then --set), and the clusters that config names.
fn plan(catalog: &Catalog, entry: &Entry, args: &DeployArgs) -> anyhow::Result<(Vec<Planned>, Vec<ExtraCluster>)> {
    let config_path = match (&entry.item.pattern, entry.item.examples.first()) {
        (Some(p), _) => entry.path(&p.config),
        (None, Some(example)) => entry.path(example),
        (None, None) => bail!("{} has no example configuration to deploy from", entry.item.id()),
    };
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config: Value =
        serde_saphyr::from_str(&text).with_context(|| format!("{} is not YAML", config_path.display()))?;
    let mut filters = Vec::new();
    for f in config["filters"].as_array().into_iter().flatten() {
        let module = f["module"].as_str().unwrap_or_default();
        let module_name = Path::new(module).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if entry.item.kind == Kind::Filter && module_name != entry.item.name {
            continue;
        }
        filters.push((module_name, f.clone()));
    }
    if filters.is_empty() {
        bail!("{} names no filter of this item", config_path.display());
    }
    if entry.item.kind == Kind::Filter {
        filters.truncate(1);
    }
    let clusters: Vec<ExtraCluster> = config["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] != "app")
        .filter_map(|c| {
            Some(ExtraCluster { name: c["name"].as_str()?.to_owned(), address: c["endpoints"][0].as_str()?.to_owned() })
        })
        .collect();
    let mut clusters = clusters;
    for assignment in &args.clusters {
        let (name, address) =
            assignment.split_once('=').with_context(|| format!("--cluster {assignment}: want NAME=HOST:PORT"))?;
        match clusters.iter_mut().find(|c| c.name == name) {
            Some(c) => c.address = address.to_owned(),
            None => clusters.push(ExtraCluster { name: name.to_owned(), address: address.to_owned() }),
        }
    }
    let values: Value = match &args.values {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_saphyr::from_str(&text).with_context(|| format!("{} is not YAML or JSON", path.display()))?
        }
        None => Value::Null,
    };
    let published = match &args.published {
        Some(p) => Some(Published::read(p)?),
        None => None,
    };
    let single = filters.len() == 1 && entry.item.kind == Kind::Filter;
    let mut planned = Vec::new();
    for (module_name, f) in filters {
        let name = f["name"].as_str().unwrap_or(&module_name).to_owned();
        let mut configuration = match (&args.configuration, single) {
            (Some(given), true) => {
                let text = match std::fs::read_to_string(given) {
                    Ok(file) => file,
                    Err(_) => given.clone(),
                };
                serde_saphyr::from_str(&text).with_context(|| format!("--configuration {given}: not YAML or JSON"))?
            }
            (Some(_), false) => bail!("--configuration replaces one filter's; for a pattern use --values"),
            (None, _) => f.get("configuration").cloned().unwrap_or(Value::Null),
        };
        let own_values = if single { values.clone() } else { values.get(&name).cloned().unwrap_or(Value::Null) };
        merge(&mut configuration, own_values);
        for assignment in &args.set {
            let (key, value) =
                assignment.split_once('=').with_context(|| format!("--set {assignment}: want KEY=VALUE"))?;
            let key = match (single, key.split_once('.')) {
                (true, _) => key,
                (false, Some((plugin, rest))) if plugin == name => rest,
                (false, _) => continue,
            };
            let value: Value = serde_saphyr::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
            set_path(&mut configuration, key, value).with_context(|| format!("--set {assignment}"))?;
        }
        let module = module_for(catalog, &module_name, single, args, published.as_ref())?;
        planned.push(Planned {
            module_name: module_name.clone(),
            spec: FilterSpec {
                name,
                module,
                root_id: f["root_id"].as_str().unwrap_or_default().to_owned(),
                vm_id: f["vm_id"]
                    .as_str()
                    .map_or_else(|| f["name"].as_str().unwrap_or(&module_name).to_owned(), str::to_owned),
                configuration,
                fail: match args.fail {
                    FailArg::Open => Fail::Open,
                    FailArg::Closed => Fail::Closed,
                    FailArg::Reload => Fail::Reload,
                },
                allow_on_headers_stop_iteration: f["allow_on_headers_stop_iteration"].as_bool().unwrap_or(false),
                env: f["env"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
                    .unwrap_or_default(),
            },
        });
    }
    Ok((planned, clusters))
}

/// Where one filter's module comes from: --image (a filter item), the publish record, --url,
/// --file, else this checkout's build (target/filters), pinned by its digest.
fn module_for(
    catalog: &Catalog,
    module_name: &str,
    single: bool,
    args: &DeployArgs,
    published: Option<&Published>,
) -> anyhow::Result<Module> {
    let local = local_module(catalog, module_name, args);
    let digest = || meshwork_oci::digest_of(&std::fs::read(&local).unwrap_or_default());
    let hex = |d: String| d.trim_start_matches("sha256:").to_owned();
    if let Some(image) = &args.image {
        if !single {
            bail!("--image names one filter's image; for a pattern use --published (catalog publish's record)");
        }
        let digest = image.split_once("@sha256:").map(|(_, d)| d.to_owned());
        return Ok(Module::Image { reference: image.clone(), digest });
    }
    if let Some(p) = published {
        let item = p.items.get(&format!("filter/{module_name}")).with_context(|| {
            format!("the publish record has no filter/{module_name}: run `meshwork catalog publish` for it")
        })?;
        let r = item.references.get("compat").or_else(|| item.references.values().next()).context("no reference")?;
        return Ok(Module::Image { reference: r.reference.clone(), digest: Some(hex(r.digest.clone())) });
    }
    if let Some(url) = &args.url {
        let url = if single && url.ends_with(".wasm") {
            url.clone()
        } else {
            format!("{}/{module_name}.wasm", url.trim_end_matches('/'))
        };
        if !local.is_file() {
            bail!("{} is missing: an http module needs its digest (run `make filters`)", local.display());
        }
        return Ok(Module::Http { url, sha256: Some(hex(digest())) });
    }
    let path = match &args.file {
        Some(f) if single => f.clone(),
        Some(dir) => dir.join(format!("{module_name}.wasm")),
        None => local.clone(),
    };
    // Meshes want absolute paths (Istio's file:// URLs must be).
    let path = if path.is_relative() { std::env::current_dir()?.join(path) } else { path };
    let sha256 = path.is_file().then(|| hex(meshwork_oci::digest_of(&std::fs::read(&path).unwrap_or_default())));
    Ok(Module::File { path: path.display().to_string(), sha256 })
}

/// This checkout's build of a filter: `target/filters/<name>.wasm`, absolute.
fn local_module(catalog: &Catalog, module_name: &str, args: &DeployArgs) -> PathBuf {
    match (&args.file, args.item.as_deref()) {
        (Some(f), _) if f.is_file() => f.clone(),
        (Some(dir), _) if dir.is_dir() => dir.join(format!("{module_name}.wasm")),
        _ => std::fs::canonicalize(&catalog.repo)
            .unwrap_or_else(|_| catalog.repo.clone())
            .join("target/filters")
            .join(format!("{module_name}.wasm")),
    }
}

/// Starts every filter once with its configuration (`meshwork run --check`), so a
/// configuration the filter refuses is caught before any mesh sees it.
fn check_filters(planned: &[Planned], clusters: &[ExtraCluster]) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshwork-deploy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut config = serde_json::json!({
        "listen": "127.0.0.1:0",
        "clusters": [{"name": "app", "endpoints": ["127.0.0.1:9"]}],
        "route": {"cluster": "app"},
        "filters": [],
        "cache_dir": dir.join("cache").display().to_string(),
    });
    for c in clusters {
        config["clusters"]
            .as_array_mut()
            .into_iter()
            .for_each(|a| a.push(serde_json::json!({"name": c.name, "endpoints": [c.address]})));
    }
    for p in planned {
        let module = match &p.spec.module {
            Module::File { path, .. } if Path::new(path).is_file() => PathBuf::from(path),
            _ => std::env::current_exe()?
                .parent()
                .and_then(Path::parent)
                .map(|t| t.join("filters").join(format!("{}.wasm", p.module_name)))
                .unwrap_or_default(),
        };
        if !module.is_file() {
            bail!(
                "cannot check filter {}: {} is missing (run `make filters`, or --no-check)",
                p.spec.name,
                module.display()
            );
        }
        let mut filter = serde_json::json!({
            "name": p.spec.name,
            "module": module.display().to_string(),
            "vm_id": p.spec.vm_id,
            "configuration": p.spec.configuration,
        });
        if !p.spec.root_id.is_empty() {
            filter["root_id"] = Value::String(p.spec.root_id.clone());
        }
        config["filters"].as_array_mut().into_iter().for_each(|a| a.push(filter.clone()));
    }
    let file = dir.join("check.json");
    std::fs::write(&file, serde_json::to_string_pretty(&config)?)?;
    let result = crate::config::ProxyConfig::load(&file).and_then(crate::proxy::check);
    let _ = std::fs::remove_dir_all(&dir);
    result.context("a filter refused its configuration")
}

fn options(args: &DeployArgs, extra_clusters: Vec<ExtraCluster>) -> anyhow::Result<Options> {
    let selector = args
        .selector
        .iter()
        .map(|s| s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect::<Option<BTreeMap<_, _>>>()
        .context("--selector wants KEY=VALUE")?;
    let target_refs = args
        .target_refs
        .iter()
        .map(|t| {
            let parts: Vec<&str> = t.split('/').collect();
            match parts.as_slice() {
                [kind, name] => {
                    Ok(TargetRef { group: default_group(kind).into(), kind: (*kind).into(), name: (*name).into() })
                }
                [group, kind, name] => {
                    Ok(TargetRef { group: (*group).into(), kind: (*kind).into(), name: (*name).into() })
                }
                _ => bail!("--target-ref {t}: want KIND/NAME or GROUP/KIND/NAME"),
            }
        })
        .collect::<anyhow::Result<_>>()?;
    if let Some(phase) = &args.phase
        && !matches!(phase.as_str(), "AUTHN" | "AUTHZ" | "STATS")
    {
        bail!("--phase {phase}: Istio's phases are AUTHN, AUTHZ and STATS");
    }
    Ok(Options {
        namespace: args.namespace.clone(),
        selector,
        target_refs,
        service: args.service.clone(),
        istio_phase: args.phase.clone(),
        listen: args.listen.clone(),
        upstream: args.upstream.clone(),
        extra_clusters,
    })
}

/// The API group of a kind people name without one.
fn default_group(kind: &str) -> &'static str {
    match kind {
        "Gateway" | "HTTPRoute" | "GRPCRoute" => "gateway.networking.k8s.io",
        "Mesh" | "MeshService" | "Dataplane" | "MeshSubset" => "kuma.io",
        _ => "",
    }
}

/// Merges `overlay` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (_, Value::Null) => {}
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// Sets `a.b.c` in `value`, creating objects on the way.
fn set_path(value: &mut Value, path: &str, new: Value) -> anyhow::Result<()> {
    let mut at = value;
    for key in path.split('.') {
        if at.is_null() {
            *at = Value::Object(Default::default());
        }
        let object = at.as_object_mut().with_context(|| format!("{key}: the value there is not an object"))?;
        at = object.entry(key).or_insert(Value::Null);
    }
    *at = new;
    Ok(())
}

fn ebpf_daemonset(entry: &Entry, args: &DeployArgs) -> anyhow::Result<Document> {
    use meshwork_ebpf::manifest::{ManifestOptions, daemonset};
    use meshwork_ebpf::preflight::Target;
    let program = <meshwork_ebpf::Program as ValueEnum>::from_str(&entry.item.name, true)
        .map_err(|e| anyhow::anyhow!("{}: {e}", entry.item.id()))?;
    let target = match program.target_kind() {
        meshwork_ebpf::program::TargetKind::Interface => Target::Interface(args.iface.clone()),
        meshwork_ebpf::program::TargetKind::Cgroup => Target::Cgroup("/sys/fs/cgroup".into()),
    };
    let ds = daemonset(&ManifestOptions {
        program,
        target,
        config: args.ebpf_config.clone(),
        name: format!("meshwork-{}", program.name()),
        namespace: if args.namespace == "default" { "kube-system".into() } else { args.namespace.clone() },
        image: args.ebpf_image.clone(),
    })
    .with_context(|| format!("{}: give the program's configuration with --ebpf-config", entry.item.id()))?;
    Ok(Document {
        kind: "DaemonSet".into(),
        name: format!("meshwork-{}", program.name()),
        value: serde_json::to_value(&ds)?,
        text: None,
        notes: Vec::new(),
    })
}

fn apply(args: &DeployArgs, docs: &[Document]) -> anyhow::Result<ExitCode> {
    if !args.mesh.is_kubernetes() && docs.iter().any(|d| d.kind != "DaemonSet") {
        bail!(
            "--apply sends Kubernetes objects; {:?} documents are files for the proxy (write them with --output)",
            args.mesh
        );
    }
    let dry_run = match args.dry_run.as_deref() {
        None => false,
        Some("server") => true,
        Some(other) => bail!(
            "--dry-run={other}: only `server` is supported (the client-side form is this command without --apply)"
        ),
    };
    let options = crate::kube_apply::ApplyOptions {
        dry_run,
        wait: (args.wait > 0).then(|| Duration::from_secs(args.wait)),
        delete: args.delete,
    };
    let values: Vec<Value> = docs.iter().map(|d| d.value.clone()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcomes = runtime.block_on(async {
        meshwork_oci::install_crypto_provider();
        let client = kube::Client::try_default()
            .await
            .context("no cluster to apply to (kubeconfig or in-cluster config, as kubectl finds them)")?;
        crate::kube_apply::apply(&client, &values, &options).await
    })?;
    for o in outcomes {
        println!("{}: {}", o.object, o.action);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn set_and_merge_change_nested_configuration() {
        let mut c = json!({"budget": {"ratio": 0.2}, "max_retries": 2});
        merge(&mut c, json!({"budget": {"window": "5s"}, "retry_on": ["5xx"]}));
        set_path(&mut c, "budget.ratio", json!(0.1)).unwrap();
        set_path(&mut c, "new.deep", json!(true)).unwrap();
        assert_eq!(
            c,
            json!({"budget": {"ratio": 0.1, "window": "5s"}, "max_retries": 2, "retry_on": ["5xx"], "new": {"deep": true}})
        );
        assert!(set_path(&mut c, "max_retries.x", json!(1)).is_err());
    }
}
