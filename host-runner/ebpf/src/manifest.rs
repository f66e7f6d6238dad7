//! `meshwork ebpf manifest`: a DaemonSet that runs `meshwork ebpf load` in the foreground on every
//! node, so the pod's lifetime is the attachment's: deleting the DaemonSet (SIGTERM) detaches.
//!
//! Least privilege: root user id (capabilities of a non-root user are not effective without
//! ambient ones), every capability dropped but CAP_BPF and CAP_NET_ADMIN, not privileged, no
//! privilege escalation, read-only root filesystem, the runtime's default seccomp profile (which
//! allows bpf(2) to holders of CAP_BPF). Host network only for XDP programs (they attach to a
//! node interface); the node's bpffs for the map pins `stats` reads; the node's cgroup2 tree,
//! read-only, for cgroup programs.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, HostPathVolumeSource, PodSpec, PodTemplateSpec, SeccompProfile,
    SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::preflight::Target;
use crate::{EbpfError, Program};

#[derive(Clone, Debug)]
pub struct ManifestOptions {
    pub program: Program,
    pub target: Target,
    /// The config as given to `--config` (inline JSON/YAML is passed through unchanged).
    pub config: Option<String>,
    pub name: String,
    pub namespace: String,
    pub image: String,
}

/// Capabilities each program needs, and no more.
pub fn capabilities(_program: Program) -> Vec<String> {
    // bpf(2) map and program creation: CAP_BPF. XDP attach (netlink/bpf_link on a netdev) and
    // cgroup attach of sock_ops / sock_addr programs: CAP_NET_ADMIN.
    vec!["BPF".into(), "NET_ADMIN".into()]
}

pub fn daemonset(opts: &ManifestOptions) -> Result<DaemonSet, EbpfError> {
    let valid = !opts.name.is_empty()
        && opts.name.len() <= 63
        && opts.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !opts.name.starts_with('-')
        && !opts.name.ends_with('-');
    if !valid {
        return Err(EbpfError::BadInput(format!(
            "--name {:?} is not a DNS label (lowercase letters, digits, '-')",
            opts.name
        )));
    }
    if let Some(config) = &opts.config
        && !config.trim_start().starts_with('{')
    {
        return Err(EbpfError::BadInput(
            "manifest --config must be inline YAML/JSON ({...}): a file on this machine is not on the nodes".into(),
        ));
    }
    // Checked here so a bad config fails now, not on every node.
    crate::config::parse(opts.program, opts.config.as_deref())?;

    let mut args: Vec<String> =
        vec!["ebpf".into(), "load".into(), opts.program.name().into(), "--name".into(), opts.program.name().into()];
    let mut volumes = vec![
        host_path("bpffs", "/sys/fs/bpf", "Directory"),
        Volume { name: "run".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    ];
    let mut mounts = vec![mount("bpffs", "/sys/fs/bpf", false), mount("run", "/run/meshwork", false)];
    let host_network = match &opts.target {
        Target::Interface(iface) => {
            args.extend(["--iface".into(), iface.clone()]);
            true
        }
        Target::Cgroup(path) => {
            args.extend(["--cgroup".into(), path.display().to_string()]);
            volumes.push(host_path("cgroup", "/sys/fs/cgroup", "Directory"));
            mounts.push(mount("cgroup", "/sys/fs/cgroup", true));
            false
        }
    };
    if let Some(config) = &opts.config {
        args.extend(["--config".into(), config.clone()]);
    }
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "meshwork-ebpf".to_owned()),
        ("meshwork.dev/program".to_owned(), opts.program.name().to_owned()),
        ("meshwork.dev/instance".to_owned(), opts.name.clone()),
    ]);
    let security = SecurityContext {
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { add: Some(capabilities(opts.program)), drop: Some(vec!["ALL".into()]) }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    };
    Ok(DaemonSet {
        metadata: ObjectMeta {
            name: Some(opts.name.clone()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    host_network: Some(host_network),
                    // SIGTERM detaches; give it a moment.
                    termination_grace_period_seconds: Some(30),
                    // Node-level enforcement belongs on every node, control plane included.
                    tolerations: Some(vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]),
                    containers: vec![Container {
                        name: opts.program.name().into(),
                        image: Some(opts.image.clone()),
                        command: Some(vec!["meshwork".into()]),
                        args: Some(args),
                        security_context: Some(security),
                        volume_mounts: Some(mounts),
                        ..Default::default()
                    }],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource { path: path.into(), type_: Some(kind.into()) }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), read_only: Some(read_only), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(program: Program, target: Target) -> ManifestOptions {
        ManifestOptions {
            program,
            target,
            config: Some("{rate: 1000, burst: 100}".into()),
            name: "meshwork-ratelimit".into(),
            namespace: "kube-system".into(),
            image: "ghcr.io/example/meshwork:dev".into(),
        }
    }

    #[test]
    fn xdp_daemonset_has_host_network_and_only_two_capabilities() {
        let ds = daemonset(&opts(Program::XdpRatelimit, Target::Interface("eth0".into()))).unwrap();
        let json = serde_json::to_value(&ds).unwrap();
        assert_eq!(json["kind"], "DaemonSet");
        assert_eq!(json["apiVersion"], "apps/v1");
        let pod = &json["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["capabilities"]["add"], serde_json::json!(["BPF", "NET_ADMIN"]));
        assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(c["securityContext"]["privileged"], false);
        let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
        assert_eq!(args[..3], ["ebpf", "load", "xdp-ratelimit"]);
        assert!(args.windows(2).any(|w| w == ["--iface", "eth0"]));
        assert_eq!(json["spec"]["selector"]["matchLabels"], json["spec"]["template"]["metadata"]["labels"]);
    }

    #[test]
    fn cgroup_daemonset_mounts_cgroups_read_only_without_host_network() {
        let mut o = opts(Program::SockopsRtt, Target::Cgroup("/sys/fs/cgroup".into()));
        o.config = None;
        let json = serde_json::to_value(daemonset(&o).unwrap()).unwrap();
        let pod = &json["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], false);
        let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["mountPath"] == "/sys/fs/cgroup" && m["readOnly"] == true));
    }

    #[test]
    fn refuses_bad_names_and_configs() {
        let mut o = opts(Program::XdpRatelimit, Target::Interface("eth0".into()));
        o.name = "Bad_Name".into();
        assert!(daemonset(&o).is_err());
        let mut o = opts(Program::XdpRatelimit, Target::Interface("eth0".into()));
        o.config = Some("{rate: 0}".into());
        assert!(daemonset(&o).unwrap_err().to_string().contains("rate must be at least 1"));
    }
}
