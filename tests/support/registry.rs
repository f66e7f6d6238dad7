//! A real OCI registry for the catalog tests: Debian's `docker-registry` (distribution 2.8) on
//! 127.0.0.1, its storage in the test's scratch directory, with or without htpasswd auth; and
//! `skopeo` as an independent client to read what meshwork pushed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port, scratch};

pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
    /// Blob and manifest storage (the filesystem driver's root).
    pub storage: PathBuf,
    pub dir: PathBuf,
}

fn need(binary: &str, package: &str) {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {binary}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "{binary} is missing: install the Debian package {package} (scripts/setup.sh does)");
}

impl Registry {
    /// Starts a registry; with `credentials`, it requires them (htpasswd, bcrypt).
    pub fn start(credentials: Option<(&str, &str)>) -> Registry {
        need("docker-registry", "docker-registry");
        let dir = scratch("registry");
        let storage = dir.join("storage");
        let port = free_port();
        let mut auth = String::new();
        if let Some((user, password)) = credentials {
            need("htpasswd", "apache2-utils");
            let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("htpasswd");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            let file = dir.join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            auth = format!("auth:\n  htpasswd:\n    realm: meshwork-test\n    path: {}\n", file.display());
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            storage.display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config_path.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = eventually(Duration::from_secs(15), || std::net::TcpStream::connect(addr).ok().map(|_| ()));
        assert!(
            up.is_some(),
            "docker-registry did not listen on {addr}: {}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        Registry { child, addr, storage, dir }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The file holding a blob's bytes (to tamper with it).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `skopeo args…` (plain HTTP to the test registry): (exit code, stdout, stderr).
pub fn skopeo(args: &[&str]) -> (i32, String, String) {
    need("skopeo", "skopeo");
    let out = Command::new("skopeo").args(args).output().expect("run skopeo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// skopeo's JSON output for `inspect` with `flags` of `docker://reference`.
pub fn skopeo_inspect(reference: &str, flags: &[&str]) -> serde_json::Value {
    let target = format!("docker://{reference}");
    let mut args = vec!["inspect", "--tls-verify=false"];
    args.extend_from_slice(flags);
    args.push(&target);
    let (code, out, err) = skopeo(&args);
    assert_eq!(code, 0, "skopeo {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo output is not JSON ({e}): {out}"))
}

/// Copies an image with skopeo into an OCI layout directory and returns the files of its last
/// layer (a tar.gz), read with the system's tar.
pub fn skopeo_copy_and_untar(reference: &str, dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    std::fs::create_dir_all(dir).unwrap();
    let (code, _, err) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("dir:{}", layout.display()),
    ]);
    assert_eq!(code, 0, "skopeo copy {reference}: {err}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("manifest.json")).unwrap()).unwrap();
    let last = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let out = dir.join("unpacked");
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("tar")
        .args(["-xzf", layout.join(&last).to_str().unwrap(), "-C", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "tar could not unpack the layer of {reference}");
    out
}
