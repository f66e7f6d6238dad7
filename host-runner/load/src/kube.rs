//! `--kubernetes`: the same workers as a Kubernetes Indexed Job, one pod per share; each pod
//! prints its worker result line, and `--collect` merges the pods' logs.
//!
//! There is no API server here, so meshwork builds the manifest (k8s-openapi types, so field
//! names and nesting are the API's own) and leaves applying it and fetching logs to kubectl.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::LoadError;
use crate::run::unix_ns;
use crate::spec::LoadSpec;

#[derive(Debug, Clone)]
pub struct JobOptions {
    pub name: String,
    pub namespace: String,
    pub image: String,
    pub replicas: usize,
    /// Pods start their schedules together this long after the manifest is built.
    pub start_delay: Duration,
    pub cpu: Option<String>,
}

/// Kubernetes sets this in every pod of an Indexed Job.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

pub fn job(spec: &LoadSpec, opts: &JobOptions) -> Result<Job, LoadError> {
    if opts.replicas == 0 {
        return Err(LoadError::BadInput("--replicas must be at least 1".into()));
    }
    if opts.replicas > spec.connections {
        return Err(LoadError::BadInput(format!(
            "--replicas {} is more than --connections {}: every pod needs a connection",
            opts.replicas, spec.connections
        )));
    }
    let valid_name = !opts.name.is_empty()
        && opts.name.len() <= 52
        && opts.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !opts.name.starts_with('-')
        && !opts.name.ends_with('-');
    if !valid_name {
        return Err(LoadError::BadInput(format!(
            "job name {:?} is not a DNS label (lowercase letters, digits, '-', at most 52)",
            opts.name
        )));
    }
    let mut spec = spec.clone();
    spec.start_at_unix_ns = Some(unix_ns(SystemTime::now() + opts.start_delay));
    spec.samples_file = None;
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "meshwork-load".to_owned()),
        ("meshwork.dev/run".to_owned(), opts.name.clone()),
    ]);
    let replicas = opts.replicas as i32;
    let resources = opts.cpu.as_ref().map(|cpu| ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_owned(), Quantity(cpu.clone()))])),
        limits: Some(BTreeMap::from([("cpu".to_owned(), Quantity(cpu.clone()))])),
        ..Default::default()
    });
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(opts.name.clone()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(replicas),
            parallelism: Some(replicas),
            // A retried pod would run its share late and skew the merged run: fail instead.
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![Container {
                        name: "load".into(),
                        image: Some(opts.image.clone()),
                        args: Some(vec![
                            "load".into(),
                            "--worker-spec".into(),
                            serde_json::to_string(&spec).expect("spec serialises"),
                            "--worker-count".into(),
                            opts.replicas.to_string(),
                        ]),
                        resources,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub fn manifest_yaml(job: &Job) -> String {
    serde_saphyr::to_string(job).expect("a Job serialises")
}

/// What to run once the manifest exists.
pub fn instructions(opts: &JobOptions, file: &str) -> String {
    format!(
        "kubectl apply -f {file}\n\
         kubectl wait -n {ns} --for=condition=complete --timeout=1h job/{name}\n\
         kubectl logs -n {ns} -l meshwork.dev/run={name} --prefix --tail=-1 --max-log-requests={n} > {name}.log\n\
         meshwork load --collect {name}.log   # merged summary; add --output json, --hgrm, --svg, --fortio-json\n\
         (pods start their schedules together {d}s after this manifest was built: apply it before then)",
        ns = opts.namespace,
        name = opts.name,
        n = opts.replicas.max(5),
        d = opts.start_delay.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{RequestSpec, Stop, Target};

    fn spec() -> LoadSpec {
        LoadSpec {
            target: Target::parse("http://svc.ns:8080/").unwrap(),
            request: RequestSpec { method: "GET".into(), headers: vec![], body: vec![] },
            http2: false,
            streams: 1,
            rps: Some(1000.0),
            connections: 8,
            threads: 1,
            stop: Stop::Duration(Duration::from_secs(30)),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(2),
            start_at_unix_ns: None,
            samples_file: None,
        }
    }

    fn opts() -> JobOptions {
        JobOptions {
            name: "load-1".into(),
            namespace: "bench".into(),
            image: "meshwork:dev".into(),
            replicas: 4,
            start_delay: Duration::from_secs(60),
            cpu: Some("1".into()),
        }
    }

    #[test]
    fn manifest_round_trips_through_the_api_types() {
        let yaml = manifest_yaml(&job(&spec(), &opts()).unwrap());
        let back: Job = serde_saphyr::from_str(&yaml).unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(v["apiVersion"], "batch/v1");
        assert_eq!(v["kind"], "Job");
        let js = back.spec.unwrap();
        assert_eq!((js.completions, js.parallelism), (Some(4), Some(4)));
        assert_eq!(js.completion_mode.as_deref(), Some("Indexed"));
        let pod = js.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let args = pod.containers[0].args.clone().unwrap();
        let shipped: LoadSpec = serde_json::from_str(&args[2]).unwrap();
        assert_eq!(shipped.connections, 8);
        assert!(shipped.start_at_unix_ns.is_some());
    }

    #[test]
    fn refuses_bad_settings() {
        let mut o = opts();
        o.replicas = 9;
        assert!(job(&spec(), &o).is_err());
        let mut o = opts();
        o.name = "Bad_Name".into();
        assert!(job(&spec(), &o).is_err());
    }
}
