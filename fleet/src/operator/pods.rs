//! Gameserver pods, pure: the pod the operator creates for a server of a fleet (the cluster's
//! pod template with the server's command, ports, probes, labels and owner filled in), and what
//! a pod says about its server (starting, serving, draining, exited).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, PodTemplateSpec, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use crate::crd::ArenaFleet;
use crate::reconcile::Phase;

/// The container of the pod template that runs `arena-gameserver`.
pub const CONTAINER: &str = "gameserver";
pub const WS_PORT: i32 = 7000;
pub const HTTP_PORT: i32 = 7001;
/// Labels the operator sets on every gameserver pod.
pub const FLEET_LABEL: &str = "arena.dev/fleet";
pub const REGION_LABEL: &str = "arena.dev/region";
pub const VERSION_LABEL: &str = "arena.dev/version";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "arena-fleet";

/// Longest fleet name: its pods are named `<fleet>-` and five random characters, and a pod's
/// name is its gameserver's server id, at most 64 characters.
pub const MAX_FLEET_NAME: usize = 58;

/// Whether `v` is a Kubernetes label value: at most 63 of A-Z a-z 0-9 - _ ., starting and
/// ending with a letter or digit.
pub fn label_value(v: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    v.len() <= 63
        && v.chars().all(ok)
        && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

/// What Kubernetes asks of a fleet beyond a valid description: its name and its region and
/// version (which become pod labels) must fit. The first problem found.
pub fn check_names(fleet: &ArenaFleet) -> Result<(), String> {
    let name = fleet.metadata.name.as_deref().unwrap_or_default();
    if name.len() > MAX_FLEET_NAME {
        return Err(format!(
            "the fleet's name is {} characters: at most {MAX_FLEET_NAME}, so its gameservers' ids (pod names) fit in 64",
            name.len()
        ));
    }
    if !label_value(&fleet.spec.name) || fleet.spec.name.is_empty() {
        return Err(format!(
            "region {:?}: a region on Kubernetes is also a label value (at most 63 of A-Z a-z 0-9 - _ ., a letter or digit at each end)",
            fleet.spec.name
        ));
    }
    if !label_value(&fleet.spec.template.version) {
        return Err(format!(
            "template.version {:?}: on Kubernetes a version is also a label value (at most 63 of A-Z a-z 0-9 - _ ., a letter or digit at each end)",
            fleet.spec.template.version
        ));
    }
    Ok(())
}

/// The label selector of a fleet's pods.
pub fn selector(fleet_name: &str) -> String {
    format!("{FLEET_LABEL}={fleet_name},{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// The pod of a new server of `fleet`, from the cluster's `template`, its servers reporting to
/// `allocators`. Its name is given by the API server (`generateName`); the gameserver learns it
/// (its server id) and its address (its public endpoint) from the downward API.
pub fn gameserver_pod(template: &PodTemplateSpec, fleet: &ArenaFleet, allocators: &[String]) -> Result<Pod, String> {
    let region = &fleet.spec;
    let name = fleet.metadata.name.clone().ok_or("the fleet has no name")?;
    let owner = fleet.controller_owner_ref(&()).ok_or("the fleet has no uid yet")?;
    let mut spec = template.spec.clone().ok_or("the pod template has no spec")?;
    let container = spec
        .containers
        .iter_mut()
        .find(|c| c.name == CONTAINER)
        .ok_or_else(|| format!("the pod template has no container named {CONTAINER:?}"))?;
    fill_container(container, fleet, allocators);
    spec.restart_policy = Some("Never".into());

    let mut labels: BTreeMap<String, String> =
        template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(FLEET_LABEL.into(), name.clone());
    labels.insert(REGION_LABEL.into(), region.name.clone());
    labels.insert(VERSION_LABEL.into(), region.template.version.clone());
    labels.insert(COMPONENT_LABEL.into(), "gameserver".into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: fleet.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template.metadata.as_ref().and_then(|m| m.annotations.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

fn fill_container(c: &mut Container, fleet: &ArenaFleet, allocators: &[String]) {
    let t = &fleet.spec.template;
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--ws-addr".into(),
        format!("0.0.0.0:{WS_PORT}"),
        "--http-addr".into(),
        format!("0.0.0.0:{HTTP_PORT}"),
        "--server-id".into(),
        "$(ARENA_POD_NAME)".into(),
        "--region".into(),
        fleet.spec.name.clone(),
        "--public-ws-url".into(),
        format!("ws://$(ARENA_POD_IP):{WS_PORT}/ws"),
        "--max-worlds".into(),
        t.max_worlds.to_string(),
        "--world-capacity".into(),
        t.world_capacity.to_string(),
        "--tick-hz".into(),
        t.tick_hz.to_string(),
        "--server-version".into(),
        t.version.clone(),
        "--allocator-url".into(),
        allocators.join(","),
    ];
    args.extend(t.args.iter().cloned());
    c.args = Some(args);
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
            ..EnvVarSource::default()
        }),
    };
    let mut env = vec![field("ARENA_POD_NAME", "metadata.name"), field("ARENA_POD_IP", "status.podIP")];
    env.extend(c.env.take().unwrap_or_default().into_iter().filter(|e| !e.name.starts_with("ARENA_POD_")));
    c.env = Some(env);
    let port = |name: &str, n: i32| ContainerPort {
        name: Some(name.into()),
        container_port: n,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    c.ports = Some(vec![port("ws", WS_PORT), port("http", HTTP_PORT)]);
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    // Ready: it serves and reports (a draining server is not ready); alive: its HTTP answers.
    c.readiness_probe = Some(probe("/readyz", 2, 1));
    c.liveness_probe = Some(probe("/healthz", 10, 3));
}

/// What a pod says about its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub version: String,
    pub phase: PodPhase,
    /// Since when it has been in this phase (ms since the Unix epoch); for a draining pod, when
    /// its termination grace period ends.
    pub since_ms: u64,
    /// Its readiness probe (`/readyz`) passes.
    pub ready: bool,
    /// Where bots reach it, once it has an address.
    pub ws_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// Not running yet (scheduling, pulling its image): Kubernetes' `Pending`.
    Starting,
    /// Its gameserver runs (Kubernetes' `Running`), ready or not: a server that served and
    /// turned unready (its allocator out of reach, say) is still a running server, never a
    /// start that took too long.
    Running,
    /// Being deleted: its gameserver drains (SIGTERM) and exits.
    Draining,
    /// Its gameserver exited (`code` when it returned one) and nobody asked it to.
    Exited { code: Option<i32> },
}

impl PodPhase {
    /// The reconciler's phase of a live pod.
    pub fn managed(self) -> Option<Phase> {
        match self {
            PodPhase::Starting => Some(Phase::Starting),
            PodPhase::Running => Some(Phase::Running),
            PodPhase::Draining => Some(Phase::Draining),
            PodPhase::Exited { .. } => None,
        }
    }
}

fn ms(t: &Time) -> u64 {
    t.0.as_millisecond().max(0) as u64
}

/// Read a pod (`None` when it is not a gameserver pod of a fleet: no name).
pub fn view(pod: &Pod) -> Option<PodView> {
    let name = pod.metadata.name.clone()?;
    let version = pod.metadata.labels.as_ref().and_then(|l| l.get(VERSION_LABEL)).cloned().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let created = pod.metadata.creation_timestamp.as_ref().map_or(0, ms);
    let ready_cond = status.conditions.as_ref().and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let ready = ready_cond.is_some_and(|c| c.status == "True");
    let ws_url = status.pod_ip.as_ref().map(|ip| {
        if ip.contains(':') { format!("ws://[{ip}]:{WS_PORT}/ws") } else { format!("ws://{ip}:{WS_PORT}/ws") }
    });
    let exited = matches!(status.phase.as_deref(), Some("Failed") | Some("Succeeded"));
    let (phase, since_ms) = if let Some(deleted) = &pod.metadata.deletion_timestamp {
        // The deletion timestamp is when the grace period ends: the drain limit counts from there.
        (PodPhase::Draining, ms(deleted))
    } else if exited {
        let terminated = status
            .container_statuses
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref());
        let at = terminated.and_then(|t| t.finished_at.as_ref()).map_or(created, ms);
        (PodPhase::Exited { code: terminated.map(|t| t.exit_code) }, at)
    } else if status.phase.as_deref() == Some("Running") {
        let since = if ready { ready_cond.and_then(|c| c.last_transition_time.as_ref()) } else { None };
        let started = status.start_time.as_ref();
        (PodPhase::Running, since.or(started).map_or(created, ms))
    } else {
        (PodPhase::Starting, created)
    };
    Some(PodView { name, version, phase, since_ms, ready: ready && phase == PodPhase::Running, ws_url })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodSpec, PodStatus,
    };

    pub(crate) fn fleet() -> ArenaFleet {
        let mut f = ArenaFleet::new("eu", crate::spec::FleetSpec::embedded_default().regions.remove(0));
        f.metadata.namespace = Some("arena".into());
        f.metadata.uid = Some("uid-1".into());
        f
    }

    fn template() -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app.kubernetes.io/instance".to_owned(), "prod".to_owned())].into()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: CONTAINER.into(),
                    image: Some("arena:1".into()),
                    env: Some(vec![EnvVar {
                        name: "ARENA_LOG_FORMAT".into(),
                        value: Some("json".into()),
                        value_from: None,
                    }]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    #[test]
    fn a_pod_is_the_template_with_the_server_filled_in() {
        let f = fleet();
        let pod = gameserver_pod(&template(), &f, &["http://alloc:7100".into()]).unwrap();
        let m = &pod.metadata;
        assert_eq!(m.generate_name.as_deref(), Some("eu-"));
        assert_eq!(m.namespace.as_deref(), Some("arena"));
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "prod", "the template's labels stay");
        assert_eq!(labels[FLEET_LABEL], "eu");
        assert_eq!(labels[REGION_LABEL], f.spec.name);
        assert_eq!(labels[VERSION_LABEL], f.spec.template.version);
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("ArenaFleet", "uid-1", Some(true)));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"), "a crashed server is replaced by the operator");
        let c = &spec.containers[0];
        let args = c.args.as_ref().unwrap().join(" ");
        assert!(
            args.starts_with("serve --ws-addr 0.0.0.0:7000 --http-addr 0.0.0.0:7001 --server-id $(ARENA_POD_NAME)")
        );
        assert!(args.contains(&format!("--region {}", f.spec.name)));
        assert!(args.contains("--public-ws-url ws://$(ARENA_POD_IP):7000/ws"));
        assert!(args.ends_with("--allocator-url http://alloc:7100"));
        let env: Vec<&str> = c.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["ARENA_POD_NAME", "ARENA_POD_IP", "ARENA_LOG_FORMAT"], "the pod's own come first, for $(…)");
        assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));

        let mut bad = template();
        bad.spec.as_mut().unwrap().containers[0].name = "server".into();
        assert!(gameserver_pod(&bad, &f, &[]).unwrap_err().contains("no container named"));
    }

    fn pod(phase: &str, ready: bool) -> Pod {
        let t = |s: i64| Time(jiff::Timestamp::from_second(s).unwrap());
        Pod {
            metadata: ObjectMeta {
                name: Some("eu-abc".into()),
                labels: Some([(VERSION_LABEL.to_owned(), "2".to_owned())].into()),
                creation_timestamp: Some(t(100)),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: Some("10.0.0.7".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(t(130)),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn names_that_kubernetes_refuses_are_caught_first() {
        let mut f = fleet();
        assert_eq!(check_names(&f), Ok(()));
        f.spec.name = "eu:central".into();
        assert!(check_names(&f).unwrap_err().contains("label value"));
        f.spec.name = "eu".into();
        f.spec.template.version = "-2".into();
        assert!(check_names(&f).unwrap_err().contains("template.version"));
        f.spec.template.version = "2".into();
        f.metadata.name = Some("f".repeat(59));
        assert!(check_names(&f).unwrap_err().contains("at most 58"));
        assert!(label_value("a.b_c-1") && !label_value(&"a".repeat(64)) && !label_value("a_"));
    }

    #[test]
    fn a_pod_says_what_its_server_does() {
        let starting = view(&pod("Pending", false)).unwrap();
        assert_eq!((starting.phase, starting.since_ms, starting.ready), (PodPhase::Starting, 100_000, false));
        assert_eq!(starting.version, "2");
        let running = view(&pod("Running", true)).unwrap();
        assert_eq!((running.phase, running.since_ms, running.ready), (PodPhase::Running, 130_000, true));
        assert_eq!(running.ws_url.as_deref(), Some("ws://10.0.0.7:7000/ws"));
        // A server that served and turned unready (its allocator out of reach) still runs: it is
        // not a start that took too long.
        let unready = view(&pod("Running", false)).unwrap();
        assert_eq!((unready.phase, unready.ready), (PodPhase::Running, false));

        let mut draining = pod("Running", true);
        draining.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(290).unwrap()));
        draining.metadata.deletion_grace_period_seconds = Some(90);
        let d = view(&draining).unwrap();
        assert_eq!((d.phase, d.since_ms, d.ready), (PodPhase::Draining, 290_000, false), "from the end of its grace");

        let mut crashed = pod("Failed", false);
        crashed.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            name: CONTAINER.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 101,
                    finished_at: Some(Time(jiff::Timestamp::from_second(150).unwrap())),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]);
        let c = view(&crashed).unwrap();
        assert_eq!((c.phase, c.since_ms), (PodPhase::Exited { code: Some(101) }, 150_000));
        assert_eq!(c.phase.managed(), None);
    }
}
