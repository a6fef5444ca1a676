//! The Kubernetes operator at the API boundary, without a cluster: a fake API server (behind
//! `tower-test`'s mock service, a small in-memory store of the fleet, its pods, Events and a
//! Lease, answering as the API server does — 201, 404 and 409 with `Status` bodies) and a fake
//! allocator (real HTTP). Each test drives `reconcile` and checks every request it made.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arena_fleet::allocator::AllocatorLink;
use arena_fleet::crd::ArenaFleet;
use arena_fleet::metrics::Metrics;
use arena_fleet::operator::events::Events;
use arena_fleet::operator::lease::{Elector, LeaseLock};
use arena_fleet::operator::pods::{CONTAINER, FLEET_LABEL, VERSION_LABEL};
use arena_fleet::operator::reconciler::{Ctx, Error, FINALIZER, reconcile};
use arena_fleet::spec::{Amount, BufferPolicy, FleetSpec, Policy, Unit};
use arena_sdk::allocator_api::{ServerState, ServerSummary};
use http::{Method, Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use kube::api::DynamicObject;
use kube::client::Body;
use kube::{Api, Client};
use parking_lot::Mutex;
use serde_json::{Value, json};

const NS: &str = "arena";

/// One request the operator made.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    body: Value,
}

#[derive(Default)]
struct Store {
    fleet: Value,
    pods: BTreeMap<String, Value>,
    lease: Option<Value>,
    version: u64,
    calls: Vec<Call>,
}

fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code}),
    )
}

impl Store {
    fn answer(&mut self, method: &Method, path: &str, body: &Value) -> (u16, Value) {
        self.version += 1;
        let rv = self.version.to_string();
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let pods = format!("/api/v1/namespaces/{NS}/pods");
        let fleet = format!("/apis/arena.dev/v1alpha1/namespaces/{NS}/arenafleets/eu");
        let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
        match (method.as_str(), path) {
            ("GET", p) if p == pods => {
                // labelSelector=k%3Dv%2Ck2%3Dv2: every pair must match.
                let selector = query
                    .split('&')
                    .find_map(|q| q.strip_prefix("labelSelector="))
                    .map(|s| s.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/"))
                    .unwrap_or_default();
                let wanted: Vec<(String, String)> = selector
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let items: Vec<Value> = self
                    .pods
                    .values()
                    .filter(|p| wanted.iter().all(|(k, v)| p["metadata"]["labels"][k.as_str()] == json!(v)))
                    .cloned()
                    .collect();
                (
                    200,
                    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("POST", p) if p == pods => {
                let mut pod = body.clone();
                let name = format!("{}{}", pod["metadata"]["generateName"].as_str().unwrap_or("pod-"), self.version);
                pod["metadata"]["name"] = json!(name);
                pod["metadata"]["uid"] = json!(format!("uid-{name}"));
                pod["metadata"]["resourceVersion"] = json!(rv);
                pod["metadata"]["creationTimestamp"] = json!(at(0));
                pod["status"] = json!({"phase": "Pending"});
                self.pods.insert(name, pod.clone());
                (201, pod)
            }
            ("DELETE", p) if p.starts_with(&format!("{pods}/")) => {
                let name = &p[pods.len() + 1..];
                let Some(pod) = self.pods.get_mut(name) else { return status(404, "NotFound") };
                if body["gracePeriodSeconds"] == json!(0) {
                    let pod = self.pods.remove(name).unwrap();
                    return (200, pod);
                }
                // The pod's own grace period unless the request gives one.
                let grace = body["gracePeriodSeconds"].as_i64().unwrap_or(90);
                pod["metadata"]["deletionTimestamp"] = json!(at(grace));
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                (200, pod.clone())
            }
            ("PATCH", p) if p == format!("{fleet}/status") => {
                merge(&mut self.fleet, body);
                (200, self.fleet.clone())
            }
            ("PATCH", p) if p == fleet => {
                // The finalizer helper's JSON patches: add or remove our finalizer.
                let ops = body.as_array().cloned().unwrap_or_default();
                for op in ops {
                    match op["op"].as_str() {
                        Some("add") => self.fleet["metadata"]["finalizers"] = json!([FINALIZER]),
                        Some("remove") => self.fleet["metadata"]["finalizers"] = json!([]),
                        _ => {}
                    }
                }
                (200, self.fleet.clone())
            }
            ("POST" | "PATCH", p) if p.contains("/events") => {
                let mut ev = body.clone();
                ev["metadata"]["name"] = json!(format!("ev-{rv}"));
                (if method == Method::POST { 201 } else { 200 }, ev)
            }
            ("GET", p) if p.starts_with(&format!("{leases}/")) => match &self.lease {
                Some(l) => (200, l.clone()),
                None => status(404, "NotFound"),
            },
            ("POST", p) if p == leases => {
                if self.lease.is_some() {
                    return status(409, "AlreadyExists");
                }
                let mut l = body.clone();
                l["metadata"]["resourceVersion"] = json!(rv);
                self.lease = Some(l.clone());
                (201, l)
            }
            ("PUT", p) if p.starts_with(&format!("{leases}/")) => {
                let current = self.lease.as_ref().map(|l| l["metadata"]["resourceVersion"].clone());
                if current != Some(body["metadata"]["resourceVersion"].clone()) {
                    return status(409, "Conflict");
                }
                let mut l = body.clone();
                l["metadata"]["resourceVersion"] = json!(rv);
                self.lease = Some(l.clone());
                (200, l)
            }
            _ => status(404, "NotFound"),
        }
    }
}

/// A JSON merge patch (RFC 7386), as the API server applies `Patch::Merge`: null removes.
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in fields {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A client whose API server is `store`.
fn fake_api(store: Arc<Mutex<Store>>) -> Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let (code, out) = {
                let mut s = store.lock();
                let answer = s.answer(&parts.method, &path, &body);
                s.calls.push(Call { method: parts.method.clone(), path: path.clone(), body });
                answer
            };
            let resp = Response::builder().status(code).body(Body::from(serde_json::to_vec(&out).unwrap())).unwrap();
            send.send_response(resp);
        }
    });
    Client::new(svc, NS)
}

/// The allocator's view the fake allocator serves, and the farewells it got.
#[derive(Default)]
struct AllocatorState {
    servers: Vec<ServerSummary>,
    farewells: Vec<String>,
}

async fn fake_allocator(state: Arc<Mutex<AllocatorState>>) -> String {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/v1/servers",
            get({
                let s = Arc::clone(&state);
                move || async move { axum::Json(s.lock().servers.clone()) }
            }),
        )
        .route(
            "/v1/servers/heartbeat",
            post({
                let s = Arc::clone(&state);
                move |axum::Json(hb): axum::Json<Value>| async move {
                    s.lock().farewells.push(hb["server_id"].as_str().unwrap_or_default().to_owned());
                    axum::Json(json!({"leaseMs": 5000}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The fake cluster's time, `secs` from now, as the API writes it.
fn at(secs: i64) -> String {
    jiff::Timestamp::from_millisecond(clock() as i64 + secs * 1000).unwrap().to_string()
}

static NOW_MS: AtomicU64 = AtomicU64::new(1_800_000_000_000);
fn clock() -> u64 {
    NOW_MS.load(Ordering::Relaxed)
}

struct Harness {
    store: Arc<Mutex<Store>>,
    allocator: Arc<Mutex<AllocatorState>>,
    ctx: Arc<Ctx>,
}

fn fleet_spec(min: u32, max: u32, policy: Policy) -> arena_fleet::spec::RegionFleet {
    let mut r = FleetSpec::embedded_default().regions.remove(0);
    r.name = "eu-central-1".into();
    (r.min_servers, r.max_servers, r.autoscale, r.scale_down_delay_secs) = (min, max, policy, 0);
    r
}

fn fleet_json(spec: &arena_fleet::spec::RegionFleet, finalized: bool) -> Value {
    let mut f = serde_json::to_value(ArenaFleet::new("eu", spec.clone())).unwrap();
    f["metadata"]["namespace"] = json!(NS);
    f["metadata"]["uid"] = json!("fleet-uid");
    f["metadata"]["generation"] = json!(3);
    f["metadata"]["resourceVersion"] = json!("1");
    if finalized {
        f["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    f
}

async fn harness(spec: &arena_fleet::spec::RegionFleet) -> Harness {
    let store = Arc::new(Mutex::new(Store { fleet: fleet_json(spec, true), ..Store::default() }));
    let allocator = Arc::new(Mutex::new(AllocatorState::default()));
    let url = fake_allocator(Arc::clone(&allocator)).await;
    let client = fake_api(Arc::clone(&store));
    let template = PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some("arena:1".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    };
    let events = Events { client: client.clone(), controller: "arena-fleet".into(), instance: "op-0".into() };
    let ctx = Ctx::new(
        client,
        AllocatorLink::new(vec![url], "api-key".into(), Some("server-key".into())),
        template,
        events,
        Arc::new(Metrics::new()),
        Duration::from_secs(5),
        clock,
    );
    Harness { store, allocator, ctx: Arc::new(ctx) }
}

impl Harness {
    fn fleet(&self) -> Arc<DynamicObject> {
        Arc::new(serde_json::from_value(self.store.lock().fleet.clone()).unwrap())
    }
    async fn reconcile(&self) -> Result<kube::runtime::controller::Action, Error> {
        // A sync period passes between two looks.
        NOW_MS.fetch_add(5_000, Ordering::Relaxed);
        self.reconcile_now().await
    }
    /// Reconcile without the clock moving (a wake-up by the fleet's own status write, say).
    async fn reconcile_now(&self) -> Result<kube::runtime::controller::Action, Error> {
        self.store.lock().calls.clear();
        reconcile(self.fleet(), Arc::clone(&self.ctx)).await
    }
    /// Make a serving pod's readiness probe fail (its gameserver lost its allocator, say).
    fn unready(&self, name: &str) {
        let mut s = self.store.lock();
        let pod = s.pods.get_mut(name).unwrap();
        pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "lastTransitionTime": at(0)}]);
    }
    fn calls(&self) -> Vec<Call> {
        self.store.lock().calls.clone()
    }
    /// The calls other than Events, as "METHOD path-without-query".
    fn api_calls(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| !c.path.contains("/events"))
            .map(|c| format!("{} {}", c.method, c.path.split('?').next().unwrap()))
            .collect()
    }
    fn events(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.path.contains("/events") && c.method == Method::POST)
            .map(|c| format!("{}: {}", c.body["reason"].as_str().unwrap_or(""), c.body["note"].as_str().unwrap_or("")))
            .collect()
    }
    /// The DELETE calls: (pod, body).
    fn deletes(&self) -> Vec<(String, Value)> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == Method::DELETE)
            .map(|c| (c.path.split('?').next().unwrap().rsplit('/').next().unwrap().to_owned(), c.body))
            .collect()
    }
    fn pod_names(&self) -> Vec<String> {
        self.store.lock().pods.keys().cloned().collect()
    }
    /// Make a pod serve: running, its probe passing, and the allocator seeing it with `seats` used.
    fn serve(&self, name: &str, seats: u32) {
        let mut s = self.store.lock();
        let pod = s.pods.get_mut(name).unwrap();
        pod["status"] = json!({
            "phase": "Running",
            "podIP": "10.1.0.9",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": at(0)}],
        });
        let version = pod["metadata"]["labels"][VERSION_LABEL].as_str().unwrap().to_owned();
        let mut a = self.allocator.lock();
        a.servers.retain(|x| x.server_id != name);
        a.servers.push(ServerSummary {
            server_id: name.into(),
            region: "eu-central-1".into(),
            ws: "ws://10.1.0.9:7000/ws".into(),
            quic: None,
            state: ServerState::Ready,
            alive: true,
            last_seen_ms_ago: 100,
            worlds: seats.div_ceil(30),
            max_worlds: 50,
            world_capacity: 30,
            seats_used: seats,
            load: None,
            version: Some(version),
        });
    }
    fn status(&self) -> Value {
        self.store.lock().fleet["status"].clone()
    }
}

fn buffer(unit: Unit, size: u32) -> Policy {
    Policy::Buffer(BufferPolicy { unit, size: Amount::Count(size) })
}

#[tokio::test]
async fn a_new_fleet_gets_its_finalizer_then_its_pods() {
    let spec = fleet_spec(2, 5, buffer(Unit::Servers, 0));
    let h = harness(&spec).await;
    h.store.lock().fleet = fleet_json(&spec, false);
    h.reconcile().await.unwrap();
    assert_eq!(
        h.api_calls(),
        ["PATCH /apis/arena.dev/v1alpha1/namespaces/arena/arenafleets/eu"],
        "the finalizer first"
    );
    assert_eq!(h.store.lock().fleet["metadata"]["finalizers"], json!([FINALIZER]));

    h.reconcile().await.unwrap();
    assert_eq!(
        h.api_calls(),
        [
            "GET /api/v1/namespaces/arena/pods",
            "POST /api/v1/namespaces/arena/pods",
            "POST /api/v1/namespaces/arena/pods",
            "PATCH /apis/arena.dev/v1alpha1/namespaces/arena/arenafleets/eu/status",
        ]
    );
    let list = h.calls().into_iter().find(|c| c.method == Method::GET).unwrap();
    assert!(list.path.contains("labelSelector=arena.dev%2Ffleet%3Deu"), "{}", list.path);
    for pod in h.store.lock().pods.values() {
        assert_eq!(pod["metadata"]["labels"][FLEET_LABEL], "eu");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "fleet-uid");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        let args = pod["spec"]["containers"][0]["args"].as_array().unwrap();
        assert!(args.iter().any(|a| a == "eu-central-1"), "reports its region: {args:?}");
    }
    let events = h.events();
    assert!(events.iter().any(|e| e.starts_with("Scaled: 0 → 2 by buffer")), "{events:?}");
    assert_eq!(events.iter().filter(|e| e.starts_with("Started")).count(), 2, "{events:?}");
    let st = h.status();
    assert_eq!((st["desired"].as_u64(), st["replicas"].as_u64(), st["ready"].as_u64()), (Some(2), Some(0), Some(0)));
    assert_eq!(st["observedGeneration"], 3);
    assert_eq!(st["lastDecision"]["to"], 2);
    assert!(st["lastDecision"]["reason"].as_str().unwrap().contains("servers"), "{st}");

    // Again, with nothing changed: no new pod.
    h.reconcile().await.unwrap();
    assert_eq!(h.pod_names().len(), 2);
}

#[tokio::test]
async fn load_scales_up_and_empty_servers_drain_but_one_with_bots_stays() {
    // Keep 1,500 free seats: three servers of 1,500, two of them full → a fourth.
    let spec = fleet_spec(1, 6, buffer(Unit::Seats, 1500));
    let h = harness(&spec).await;
    h.reconcile().await.unwrap();
    let first = h.pod_names();
    assert_eq!(first.len(), 1);
    h.serve(&first[0], 1400);
    h.reconcile().await.unwrap();
    let pods = h.pod_names();
    assert_eq!(pods.len(), 2, "100 free seats < 1,500: one more");
    assert!(h.events().iter().any(|e| e.starts_with("Scaled: 1 → 2")), "{:?}", h.events());

    // Most bots leave: 30 stay on the first server, the second empties, and a buffer of 100
    // seats needs one server — the empty one goes, the one with bots stays.
    h.serve(&pods[0], 30);
    h.serve(&pods[1], 0);
    h.store.lock().fleet = fleet_json(&fleet_spec(1, 6, buffer(Unit::Seats, 100)), true);
    h.reconcile().await.unwrap();
    let deletes = h.deletes();
    assert_eq!(deletes.len(), 1, "{:?} {}", h.api_calls(), h.status());
    assert_eq!(deletes[0].0, pods[1], "the empty server drains");
    assert_ne!(deletes[0].1["gracePeriodSeconds"], json!(0), "a drain is a graceful deletion");
    assert!(h.events().iter().any(|e| e.starts_with("Draining:")));
    // The drained pod stays listed (draining) until its gameserver exits; nothing else moves.
    h.reconcile().await.unwrap();
    assert!(h.calls().iter().all(|c| c.method != Method::DELETE && c.method != Method::POST), "{:?}", h.api_calls());
    assert_eq!(h.status()["draining"], 1);
}

#[tokio::test]
async fn a_server_with_bots_drains_only_for_a_rolling_update() {
    let spec = fleet_spec(1, 3, buffer(Unit::Servers, 0));
    let h = harness(&spec).await;
    h.reconcile().await.unwrap();
    let old = h.pod_names()[0].clone();
    h.serve(&old, 600);
    // A minimum of 0 would still keep it: it holds bots.
    let mut idle = spec.clone();
    idle.min_servers = 0;
    h.store.lock().fleet = fleet_json(&idle, true);
    h.reconcile().await.unwrap();
    assert!(h.calls().iter().all(|c| c.method != Method::DELETE), "a server with bots is never drained to scale down");

    // A new template version: a new server first (surge), the old one drains once it serves.
    let mut v2 = spec.clone();
    v2.template.version = "2".into();
    h.store.lock().fleet = fleet_json(&v2, true);
    h.reconcile().await.unwrap();
    let created: Vec<String> = h.pod_names().into_iter().filter(|p| *p != old).collect();
    assert_eq!(created.len(), 1);
    assert!(h.calls().iter().all(|c| c.method != Method::DELETE), "not before its replacement serves");
    assert_eq!(h.store.lock().pods[&created[0]]["metadata"]["labels"][VERSION_LABEL], "2");
    h.serve(&created[0], 0);
    h.reconcile().await.unwrap();
    let deletes = h.deletes();
    assert_eq!(deletes.len(), 1, "{:?} {:?}", h.api_calls(), h.events());
    assert_eq!(deletes[0].0, old, "the old server drains, its worlds move with their bots");
    assert_ne!(deletes[0].1["gracePeriodSeconds"], json!(0));
}

#[tokio::test]
async fn a_crashed_pod_is_replaced_and_the_allocator_told() {
    let spec = fleet_spec(2, 4, buffer(Unit::Servers, 0));
    let h = harness(&spec).await;
    h.reconcile().await.unwrap();
    let pods = h.pod_names();
    h.serve(&pods[0], 0);
    h.serve(&pods[1], 90);
    h.store.lock().pods.get_mut(&pods[1]).unwrap()["status"] = json!({
        "phase": "Failed",
        "podIP": "10.1.0.9",
        "containerStatuses": [{
            "name": CONTAINER, "ready": false, "restartCount": 0, "image": "arena:1", "imageID": "",
            "state": {"terminated": {"exitCode": 101, "finishedAt": at(0)}},
        }],
    });
    h.reconcile().await.unwrap();
    let calls = h.api_calls();
    assert!(calls.contains(&format!("DELETE /api/v1/namespaces/arena/pods/{}", pods[1])), "{calls:?}");
    assert_eq!(calls.iter().filter(|c| c.starts_with("POST")).count(), 1, "replaced: {calls:?}");
    assert_eq!(h.allocator.lock().farewells, [pods[1].clone()], "its worlds move at once");
    let events = h.events();
    assert!(events.iter().any(|e| e.starts_with("Crashed:") && e.contains("exit code 101")), "{events:?}");
    assert_eq!(h.pod_names().len(), 2);
}

#[tokio::test]
async fn deleting_a_fleet_drains_every_pod_before_it_goes() {
    let spec = fleet_spec(2, 4, buffer(Unit::Servers, 0));
    let h = harness(&spec).await;
    h.reconcile().await.unwrap();
    let pods = h.pod_names();
    h.serve(&pods[0], 300);
    h.serve(&pods[1], 0);
    h.store.lock().fleet["metadata"]["deletionTimestamp"] = json!(at(0));
    let err = h.reconcile().await.unwrap_err();
    assert!(matches!(err, Error::Draining(2)), "{err}");
    let deletes = h.deletes();
    assert_eq!(deletes.len(), 2, "every server drains, bots and all");
    assert!(deletes.iter().all(|d| d.1["gracePeriodSeconds"] != json!(0)));
    assert_eq!(h.store.lock().fleet["metadata"]["finalizers"], json!([FINALIZER]), "held while they drain");
    // Still draining: not deleted twice, still held.
    assert!(h.reconcile().await.is_err());
    assert!(h.calls().iter().all(|c| c.method != Method::DELETE));
    // Their gameservers exited: the fleet may go.
    h.store.lock().pods.clear();
    h.reconcile().await.unwrap();
    assert_eq!(h.store.lock().fleet["metadata"]["finalizers"], json!([]));
    assert!(h.events().iter().any(|e| e.starts_with("Drained:")));
}

#[tokio::test]
async fn a_fleet_the_schema_lets_through_but_the_fleet_refuses_gets_an_event_not_pods() {
    // The CRD's schema cannot say min ≤ max (nor check policies nested past its depth).
    let bad = fleet_spec(5, 2, buffer(Unit::Servers, 0));
    let h = harness(&bad).await;
    h.reconcile().await.unwrap();
    assert!(h.calls().iter().all(|c| c.method != Method::POST || c.path.contains("/events")), "{:?}", h.api_calls());
    let events = h.events();
    assert!(events.iter().any(|e| e.starts_with("InvalidSpec:") && e.contains("minServers")), "{events:?}");
}

#[tokio::test]
async fn a_fleet_the_operator_cannot_read_is_reported_and_others_go_on() {
    // A typo in a policy nested deeper than the CRD's schema describes: the API server keeps it
    // (it preserves what it cannot check there), the operator cannot read it.
    let spec = fleet_spec(1, 3, buffer(Unit::Servers, 0));
    let h = harness(&spec).await;
    h.store.lock().fleet["spec"]["autoscale"] =
        json!({"chain": [{"chain": [{"chain": [{"bufer": {"unit": "seats", "size": 10}}]}]}]});
    h.reconcile().await.unwrap();
    assert!(h.calls().iter().all(|c| c.path.contains("/events")), "{:?}", h.api_calls());
    let events = h.events();
    assert!(
        events.iter().any(|e| e.starts_with("InvalidSpec: cannot read the fleet") && e.contains("bufer")),
        "{events:?}"
    );
}

#[tokio::test]
async fn names_kubernetes_would_refuse_are_reported_not_tried() {
    let mut spec = fleet_spec(1, 3, buffer(Unit::Servers, 0));
    spec.name = "eu:central".into();
    let h = harness(&spec).await;
    h.reconcile().await.unwrap();
    assert!(h.pod_names().is_empty());
    assert!(h.events().iter().any(|e| e.starts_with("InvalidSpec:") && e.contains("label value")), "{:?}", h.events());
}

#[tokio::test]
async fn a_serving_pod_that_turns_unready_is_not_killed() {
    let spec = fleet_spec(2, 4, buffer(Unit::Servers, 0));
    let h = harness(&spec).await;
    h.reconcile().await.unwrap();
    for p in h.pod_names() {
        h.serve(&p, 60);
    }
    h.reconcile().await.unwrap();
    // The allocator goes away for longer than a start may take: the servers' probes fail.
    NOW_MS.fetch_add(600_000, Ordering::Relaxed);
    for p in h.pod_names() {
        h.unready(&p);
    }
    h.allocator.lock().servers.clear();
    h.reconcile().await.unwrap();
    assert!(h.deletes().is_empty(), "{:?}", h.api_calls());
    assert_eq!(h.status()["ready"], 0);
    assert_eq!(h.status()["replicas"], 2);
}

#[tokio::test]
async fn its_own_status_write_does_not_make_a_fleet_spin() {
    let spec = fleet_spec(1, 3, buffer(Unit::Servers, 0));
    let h = harness(&spec).await;
    h.reconcile().await.unwrap();
    let again = h.reconcile_now().await.unwrap();
    assert!(h.calls().is_empty(), "woken at once, it waits for the period: {:?}", h.api_calls());
    assert_eq!(again, kube::runtime::controller::Action::requeue(Duration::from_secs(5)));
    // A new spec (a new generation) is acted on at once.
    h.store.lock().fleet["metadata"]["generation"] = json!(4);
    h.reconcile_now().await.unwrap();
    assert!(!h.calls().is_empty());
}

#[tokio::test]
async fn a_crash_loop_is_reported_then_cleared() {
    let spec = fleet_spec(1, 3, buffer(Unit::Servers, 0));
    let h = harness(&spec).await;
    h.reconcile().await.unwrap();
    for _ in 0..3 {
        // A replacement may wait out its backoff.
        while h.pod_names().is_empty() {
            NOW_MS.fetch_add(60_000, Ordering::Relaxed);
            h.reconcile().await.unwrap();
        }
        let p = h.pod_names()[0].clone();
        h.store.lock().pods.get_mut(&p).unwrap()["status"] = json!({"phase": "Failed"});
        // Past any backoff: the replacement starts in this sync.
        NOW_MS.fetch_add(60_000, Ordering::Relaxed);
        h.reconcile().await.unwrap();
    }
    assert!(h.status()["crashLoop"].as_str().is_some_and(|c| c.contains("crash loop")), "{}", h.status());
    // Ten quiet minutes later the crashes are forgotten, and the merge patch removes the field.
    NOW_MS.fetch_add(700_000, Ordering::Relaxed);
    h.reconcile().await.unwrap();
    assert!(h.status().get("crashLoop").is_none(), "{}", h.status());
}

#[tokio::test]
async fn without_the_allocator_nothing_drains() {
    let spec = fleet_spec(0, 4, buffer(Unit::Servers, 0));
    let h = harness(&spec).await;
    // Two serving pods the operator finds, and an allocator that does not answer.
    let mut ctx_less = fleet_spec(2, 4, buffer(Unit::Servers, 0));
    ctx_less.min_servers = 2;
    h.store.lock().fleet = fleet_json(&ctx_less, true);
    h.reconcile().await.unwrap();
    for p in h.pod_names() {
        h.serve(&p, 0);
    }
    h.store.lock().fleet = fleet_json(&spec, true);
    let dead = AllocatorLink::new(vec!["http://127.0.0.1:9".into()], "k".into(), None);
    let ctx = Arc::new(Ctx::new(
        h.ctx.client.clone(),
        dead,
        h.ctx.template.clone(),
        h.ctx.events.clone(),
        Arc::new(Metrics::new()),
        Duration::from_secs(5),
        clock,
    ));
    reconcile(h.fleet(), ctx).await.unwrap();
    assert!(h.calls().iter().all(|c| c.method != Method::DELETE), "{:?}", h.api_calls());
    assert_eq!(h.status()["allocatorReachable"], false);
}

#[tokio::test]
async fn the_lease_is_held_by_one_replica_only() {
    let store = Arc::new(Mutex::new(Store::default()));
    let client = fake_api(Arc::clone(&store));
    let lock =
        |c: &Client| LeaseLock { api: Api::<Lease>::namespaced(c.clone(), NS), name: "arena-fleet-operator".into() };
    let (la, lb) = (lock(&client), lock(&client));
    let mut a = Elector::new("op-a".into(), Duration::from_secs(15));
    let mut b = Elector::new("op-b".into(), Duration::from_secs(15));
    let mut now = 0;
    assert!(la.round(&mut a, now).await.unwrap(), "a creates it");
    assert!(!lb.round(&mut b, now).await.unwrap(), "b finds it held");
    for _ in 0..20 {
        now += 3_000;
        assert!(la.round(&mut a, now).await.unwrap());
        assert!(!lb.round(&mut b, now).await.unwrap());
        assert!(a.leading(now) && !b.leading(now), "never both");
    }
    assert_eq!(store.lock().lease.as_ref().unwrap()["spec"]["holderIdentity"], "op-a");
    // a stops renewing (killed, partitioned): b waits a whole lease duration on its own clock,
    // by then a has stopped acting, and b takes over.
    let quiet_from = now;
    loop {
        now += 3_000;
        let took = lb.round(&mut b, now).await.unwrap();
        if took {
            break;
        }
        assert!(now - quiet_from < 15_000 + 3_000, "b takes over within a lease duration");
    }
    assert!(now - quiet_from >= 15_000, "and not before");
    assert!(!a.leading(now), "a stopped acting before b started");
    assert_eq!(store.lock().lease.as_ref().unwrap()["spec"]["holderIdentity"], "op-b");
    assert_eq!(store.lock().lease.as_ref().unwrap()["spec"]["leaseTransitions"], 1);
    // a comes back: its write carries an old version and is refused; it follows.
    assert!(!la.round(&mut a, now).await.unwrap());
    assert!(!a.leading(now));
}
