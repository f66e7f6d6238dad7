//! `meshwork filter inspect FILE.wasm`: what a module declares, exports and imports, and what
//! this host would refuse to link.

use std::path::Path;

use anyhow::Context;
use meshwork_wasm_host::ModuleInfo;
use meshwork_wasm_host::abi::AbiVersion;
use serde_json::json;

pub struct Report {
    pub info: ModuleInfo,
    pub missing: Vec<String>,
}

pub fn inspect(path: &Path) -> anyhow::Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let info =
        ModuleInfo::parse(&bytes).map_err(|e| anyhow::anyhow!("{} is not a valid module: {e}", path.display()))?;
    let abi = info.abi_version().unwrap_or(AbiVersion::V0_2_1);
    let missing = info
        .imports
        .iter()
        .filter(|i| !meshwork_wasm_host::hostcalls::provides(abi, &i.module, &i.name))
        .map(|i| format!("{}.{}", i.module, i.name))
        .collect();
    Ok(Report { info, missing })
}

impl Report {
    pub fn json(&self, path: &Path) -> serde_json::Value {
        let i = &self.info;
        let allocator = ["malloc", "proxy_on_memory_allocate"].into_iter().find(|f| i.exports(f));
        json!({
            "file": path.display().to_string(),
            "size_bytes": i.size_bytes,
            "abi_versions": i.abi_versions.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
            "root_ids": null,
            "root_ids_note": "proxy-wasm modules do not declare root ids; the host passes root_id from configuration",
            "allocator": allocator,
            "exports_memory": i.exports_memory,
            "callbacks": i.callbacks().collect::<Vec<_>>(),
            "imports": i.imports.iter().map(|im| json!({"module": im.module, "name": im.name, "kind": im.kind})).collect::<Vec<_>>(),
            "missing_imports": self.missing,
            "loadable": self.problems().is_empty(),
            "problems": self.problems(),
        })
    }

    /// Why this host would refuse the module.
    pub fn problems(&self) -> Vec<String> {
        let i = &self.info;
        let mut out = Vec::new();
        match i.abi_version() {
            None => out.push("no proxy_abi_version_* export: not a proxy-wasm module".into()),
            Some(AbiVersion::V0_1_0) => out.push("ABI 0.1.0 is not supported".into()),
            _ => {}
        }
        if !i.exports_memory {
            out.push("exports no memory named \"memory\"".into());
        }
        if !i.exports("malloc") && !i.exports("proxy_on_memory_allocate") {
            out.push("exports neither malloc nor proxy_on_memory_allocate".into());
        }
        for m in &self.missing {
            out.push(format!("imports {m}, which this host does not provide"));
        }
        out
    }

    pub fn text(&self, path: &Path) -> String {
        let i = &self.info;
        let mut out = format!("{} ({} bytes)\n", path.display(), i.size_bytes);
        let abi: Vec<_> = i.abi_versions.iter().map(|v| v.as_str()).collect();
        out += &format!("  proxy-wasm ABI: {}\n", if abi.is_empty() { "none declared".into() } else { abi.join(", ") });
        out += "  root ids: not declared by the module (the host passes root_id from configuration)\n";
        out += &format!("  callbacks ({}): {}\n", i.callbacks().count(), i.callbacks().collect::<Vec<_>>().join(", "));
        out += &format!("  imports ({}):\n", i.imports.len());
        for im in &i.imports {
            let mark = if self.missing.contains(&format!("{}.{}", im.module, im.name)) { "  MISSING" } else { "" };
            out += &format!("    {}.{}{mark}\n", im.module, im.name);
        }
        let problems = self.problems();
        if problems.is_empty() {
            out += "  loadable by meshwork: yes\n";
        } else {
            out += "  loadable by meshwork: no\n";
            for p in problems {
                out += &format!("    - {p}\n");
            }
        }
        out
    }
}
