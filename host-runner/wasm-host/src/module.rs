//! Loading proxy-wasm modules: the shared engine, compilation with an on-disk cache, and
//! inspection of what a module exports and imports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module};

use crate::abi::AbiVersion;
use crate::error::LoadError;

/// How often the engine's epoch advances; callback deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// One wasmtime engine per process, with an epoch ticker thread for callback deadlines.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
}

impl WasmEngine {
    /// Builds the engine. `cache_dir` keeps compiled modules across runs (None: no disk cache).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<WasmEngine, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // Guest code must not be able to spin a worker forever, nor exhaust the host stack.
        config.max_wasm_stack(1 << 20);
        // `perf` can name guest functions when asked (writes /tmp/perf-PID.map).
        if std::env::var_os("MESHWORK_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start epoch thread: {e}")))?;
        Ok(WasmEngine { engine, cache_dir })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, validates and compiles `path`, using the disk cache when it holds this exact module.
    /// The file's size and magic number are checked before it is read whole, so a wrong path
    /// (a disk image, a log) costs nothing.
    pub fn load(&self, path: &Path, max_bytes: u64) -> Result<LoadedModule, LoadError> {
        use std::io::Read;
        let read_error = |e| LoadError::Read { path: path.to_owned(), source: e };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let size = file.metadata().map_err(read_error)?.len();
        if size > max_bytes {
            return Err(LoadError::TooLarge { path: path.to_owned(), size, max: max_bytes });
        }
        let mut magic = [0u8; 4];
        if file.read_exact(&mut magic).is_err() || &magic != b"\0asm" {
            return Err(LoadError::Invalid {
                path: path.to_owned(),
                reason: "not a WebAssembly module (bad magic number)".into(),
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        bytes.extend_from_slice(&magic);
        file.take(max_bytes - 4).read_to_end(&mut bytes).map_err(read_error)?;
        self.load_bytes(path, &bytes)
    }

    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<LoadedModule, LoadError> {
        let info = ModuleInfo::parse(bytes).map_err(|reason| LoadError::Invalid { path: path.to_owned(), reason })?;
        let module = match self.cached_path(bytes) {
            Some(cached) => self.load_cached(&cached, path, bytes)?,
            None => self.compile(path, bytes)?,
        };
        Ok(LoadedModule { module, info: Arc::new(info), path: path.to_owned() })
    }

    fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Module, LoadError> {
        Module::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile { path: path.to_owned(), reason: format!("{e:#}") })
    }

    /// Cache entries are named by the module's hash and the engine's compatibility hash, so a
    /// different wasmtime or different settings never read an old artifact.
    fn cached_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        let mut engine_hash = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut engine_hash);
        let engine_hash = std::hash::Hasher::finish(&engine_hash);
        Some(dir.join(format!("{:x}-{engine_hash:016x}.cwasm", hasher.finalize())))
    }

    fn load_cached(&self, cached: &Path, path: &Path, bytes: &[u8]) -> Result<Module, LoadError> {
        if cached.exists() {
            // SAFETY: the file was written by `Module::serialize` of an engine with the same
            // compatibility hash (it is in the name) into meshwork's own cache directory.
            match unsafe { Module::deserialize_file(&self.engine, cached) } {
                Ok(module) => return Ok(module),
                Err(e) => {
                    tracing::warn!(cache = %cached.display(), "ignoring unreadable compiled module: {e}")
                }
            }
        }
        let module = self.compile(path, bytes)?;
        if let Err(e) = write_cache(cached, &module) {
            tracing::warn!(cache = %cached.display(), "cannot cache compiled module: {e}");
        }
        Ok(module)
    }
}

fn write_cache(cached: &Path, module: &Module) -> std::io::Result<()> {
    if let Some(dir) = cached.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let data = module.serialize().map_err(std::io::Error::other)?;
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, cached)
}

/// A compiled module with what inspection learned about it.
#[derive(Clone)]
pub struct LoadedModule {
    pub module: Module,
    pub info: Arc<ModuleInfo>,
    pub path: PathBuf,
}

/// What a module exports and imports, as `meshwork filter inspect` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleInfo {
    pub abi_versions: Vec<AbiVersion>,
    pub exported_functions: Vec<String>,
    pub imports: Vec<Import>,
    pub exports_memory: bool,
    pub size_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    pub module: String,
    pub name: String,
    pub kind: &'static str,
}

impl ModuleInfo {
    pub fn parse(bytes: &[u8]) -> Result<ModuleInfo, String> {
        use wasmparser::{Parser, Payload, TypeRef};
        let mut info = ModuleInfo { size_bytes: bytes.len(), ..ModuleInfo::default() };
        if bytes.get(..4) != Some(b"\0asm") {
            return Err("not a WebAssembly module (bad magic number)".into());
        }
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(|e| e.to_string())? {
                Payload::Version { encoding: wasmparser::Encoding::Component, .. } => {
                    return Err("this is a WebAssembly component; proxy-wasm filters are core modules".into());
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.map_err(|e| e.to_string())?;
                        let kind = match import.ty {
                            TypeRef::Func(_) => "function",
                            TypeRef::Memory(_) => "memory",
                            TypeRef::Table(_) => "table",
                            TypeRef::Global(_) => "global",
                            TypeRef::Tag(_) => "tag",
                            _ => "other",
                        };
                        info.imports.push(Import { module: import.module.into(), name: import.name.into(), kind });
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.map_err(|e| e.to_string())?;
                        match export.kind {
                            wasmparser::ExternalKind::Func => {
                                if let Some(v) = AbiVersion::from_export(export.name) {
                                    info.abi_versions.push(v);
                                }
                                info.exported_functions.push(export.name.into());
                            }
                            wasmparser::ExternalKind::Memory if export.name == "memory" => info.exports_memory = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        info.abi_versions.sort();
        Ok(info)
    }

    /// The newest ABI version the module declares.
    pub fn abi_version(&self) -> Option<AbiVersion> {
        self.abi_versions.last().copied()
    }

    /// Whether it can be a network (TCP) filter.
    pub fn exports_network_callbacks(&self) -> bool {
        ["proxy_on_new_connection", "proxy_on_downstream_data", "proxy_on_upstream_data"]
            .iter()
            .any(|n| self.exports(n))
    }

    pub fn exports(&self, name: &str) -> bool {
        self.exported_functions.iter().any(|f| f == name)
    }

    /// Callbacks (`proxy_on_*`) the module exports, the allocator aside.
    pub fn callbacks(&self) -> impl Iterator<Item = &str> {
        self.exported_functions
            .iter()
            .map(String::as_str)
            .filter(|f| f.starts_with("proxy_on_") && *f != "proxy_on_memory_allocate")
    }
}
