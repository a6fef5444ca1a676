//! The controller: every sync period it looks (the backend's servers, the allocator's view of
//! them), decides (each region's policy), reconciles (what to start, drain, kill) and acts
//! through the backend, recording every decision and event with its reason. The deciding is in
//! `policy.rs` and `reconcile.rs`; this is the thin layer that moves data between them and the
//! world. Time comes in as a parameter of [`Controller::sync`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arena_sdk::allocator_api::ServerSummary;

use crate::allocator::AllocatorLink;
use crate::backend::{Backend, Process, ServerRequest};
use crate::load::{RegionLoad, takes_bots};
use crate::metrics::{self, Metrics};
use crate::reconcile::{Action, CrashBackoff, Managed, Phase, Want, reconcile};
use crate::sizing::Sizing;
use crate::spec::{FleetSpec, SpecError};
use crate::status::{DecisionRecord, Event, FleetStatus, RegionStatus, Sample, ServerStatus, Timeline};

/// A start that has not served after this long is given up.
pub const START_LIMIT: Duration = Duration::from_secs(60);
/// A drain that has not ended after this long is cut short (the gameserver's own drain takes
/// at most its drain timeout plus the time to save its worlds).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// Events and samples kept (the oldest go first).
pub const MAX_EVENTS: usize = 10_000;
pub const MAX_SAMPLES: usize = 200_000;

#[derive(Debug, Clone)]
struct Tracked {
    managed: Managed,
    /// When the decision that started it was made (ms).
    decided_ms: u64,
    /// The fleet asked it to go (drain or kill): its exit is no crash.
    stopping: bool,
    registered: bool,
    seated: bool,
    ws_url: Option<String>,
}

#[derive(Debug, Default)]
struct RegionState {
    sizing: Sizing,
    crashes: CrashBackoff,
    servers: BTreeMap<String, Tracked>,
    last: Option<DecisionRecord>,
    load: RegionLoad,
}

/// Sizes and heals a fleet through a backend.
#[derive(Debug)]
pub struct Controller<B> {
    spec: FleetSpec,
    backend: B,
    allocator: AllocatorLink,
    regions: BTreeMap<String, RegionState>,
    next_id: u64,
    start_ms: u64,
    events: VecDeque<Event>,
    samples: VecDeque<Sample>,
    metrics: Arc<Metrics>,
    allocator_ok: bool,
    view: Vec<ServerSummary>,
}

impl<B: Backend> Controller<B> {
    /// A controller for `spec`, its servers reporting to `allocators` (read with `key`).
    pub fn new(
        spec: FleetSpec,
        backend: B,
        allocators: Vec<String>,
        key: String,
        metrics: Arc<Metrics>,
        now_ms: u64,
    ) -> Self {
        Controller {
            spec,
            backend,
            allocator: AllocatorLink::new(allocators, key, None),
            regions: BTreeMap::new(),
            next_id: 1,
            start_ms: now_ms,
            events: VecDeque::new(),
            samples: VecDeque::new(),
            metrics,
            allocator_ok: false,
            view: Vec::new(),
        }
    }

    /// With the key its servers report with, the fleet tells the allocator when one of them
    /// died (its process exited unasked): the allocator moves its worlds at once instead of
    /// after its server timeout. The farewell a draining server sends itself, sent for it.
    pub fn set_server_key(&mut self, key: String) {
        self.allocator.server_key = Some(key);
    }

    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn into_backend(self) -> B {
        self.backend
    }

    fn t_s(&self, now_ms: u64) -> f64 {
        now_ms.saturating_sub(self.start_ms) as f64 / 1000.0
    }

    fn event(
        &mut self,
        now_ms: u64,
        region: &str,
        kind: &str,
        server: Option<&str>,
        detail: String,
        secs: Option<f64>,
    ) {
        tracing::info!(region, kind, server, secs, "{detail}");
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        let t_s = self.t_s(now_ms);
        self.events.push_back(Event {
            t_s,
            region: region.to_owned(),
            kind: kind.to_owned(),
            server: server.map(str::to_owned),
            detail,
            secs,
        });
    }

    /// Replace the description. Regions may be added and changed, not removed (set one's
    /// `minServers` to 0 and let it empty instead). A new template version starts a rolling
    /// update at the next sync.
    pub fn set_spec(&mut self, spec: FleetSpec, now_ms: u64) -> Result<(), SpecError> {
        spec.validate()?;
        for old in &self.spec.regions {
            if spec.region(&old.name).is_none() {
                return Err(SpecError(format!("region {} cannot be removed from a running fleet", old.name)));
            }
        }
        let mut changes = Vec::new();
        for r in &spec.regions {
            match self.spec.region(&r.name) {
                None => changes.push((r.name.clone(), "region added".to_owned())),
                Some(old) if old == r => {}
                Some(old) => {
                    let mut what = Vec::new();
                    if old.template.version != r.template.version {
                        what.push(format!(
                            "version {} → {} (rolling update)",
                            old.template.version, r.template.version
                        ));
                    } else if old.template != r.template {
                        what.push("template changed without a new version: new servers only".to_owned());
                    }
                    if (old.min_servers, old.max_servers) != (r.min_servers, r.max_servers) {
                        what.push(format!(
                            "servers {}–{} → {}–{}",
                            old.min_servers, old.max_servers, r.min_servers, r.max_servers
                        ));
                    }
                    if old.autoscale != r.autoscale {
                        what.push("autoscaling policy changed".to_owned());
                    }
                    if old.rolling_update != r.rolling_update {
                        what.push("rolling update bounds changed".to_owned());
                    }
                    changes.push((r.name.clone(), what.join("; ")));
                }
            }
        }
        self.spec = spec;
        for (region, detail) in changes {
            self.event(now_ms, &region, "spec", None, detail, None);
        }
        Ok(())
    }

    /// Look, decide, act: one sync at `now_ms` (ms since the Unix epoch).
    pub async fn sync(&mut self, now_ms: u64) {
        let procs: HashMap<String, Process> = self.backend.observe().await.into_iter().collect();
        match self.allocator.view().await {
            Some(v) => {
                self.view = v;
                self.allocator_ok = true;
            }
            None => {
                if self.allocator_ok || self.samples.is_empty() {
                    tracing::warn!("the allocator's view cannot be read: holding every region as it is");
                }
                self.allocator_ok = false;
                self.metrics.allocator_errors.inc();
            }
        }
        let names: Vec<String> = self.spec.regions.iter().map(|r| r.name.clone()).collect();
        for name in names {
            self.sync_region(&name, &procs, now_ms).await;
        }
    }

    async fn sync_region(&mut self, name: &str, procs: &HashMap<String, Process>, now_ms: u64) {
        let Some(spec) = self.spec.region(name).cloned() else { return };
        let mut rs = self.regions.remove(name).unwrap_or_default();
        let by_id: HashMap<&str, &ServerSummary> = self.view.iter().map(|s| (s.server_id.as_str(), s)).collect();
        let mut notes: Vec<(&'static str, Option<String>, String, Option<f64>)> = Vec::new();

        // What each server's process is doing.
        let mut gone = Vec::new();
        let mut dead: Vec<(String, String)> = Vec::new();
        for (id, t) in &mut rs.servers {
            match procs.get(id) {
                None | Some(Process::Exited { .. }) => {
                    let code = match procs.get(id) {
                        Some(Process::Exited { code }) => *code,
                        _ => None,
                    };
                    let how = code.map_or("killed".to_owned(), |c| format!("exit code {c}"));
                    if t.stopping {
                        notes.push(("stopped", Some(id.clone()), how, None));
                    } else {
                        notes.push(("crashed", Some(id.clone()), format!("exited unasked ({how})"), None));
                        if let Some(ws) = &t.ws_url {
                            dead.push((id.clone(), ws.clone()));
                        }
                        rs.crashes.crashed(now_ms);
                        self.metrics.crashes.get_or_create(&metrics::region(name)).inc();
                    }
                    gone.push(id.clone());
                }
                Some(Process::Running { ws_url }) => {
                    if t.managed.phase == Phase::Starting {
                        t.managed.phase = Phase::Running;
                        t.managed.since_ms = now_ms;
                        t.ws_url = Some(ws_url.clone());
                        let secs = now_ms.saturating_sub(t.decided_ms) as f64 / 1000.0;
                        notes.push(("ready", Some(id.clone()), format!("serving at {ws_url}"), Some(secs)));
                    }
                }
                Some(Process::Starting) => {}
            }
        }
        for id in gone {
            rs.servers.remove(&id);
            self.backend.forget(&id);
        }
        for (id, ws) in dead {
            if self.allocator.farewell(&id, name, &ws, &spec.template).await {
                notes.push(("farewell", Some(id), "the allocator moves its worlds now".into(), None));
            }
        }

        // What the allocator sees of them.
        if self.allocator_ok {
            for (id, t) in &mut rs.servers {
                match by_id.get(id.as_str()) {
                    Some(s) => {
                        t.managed.ready = takes_bots(s);
                        t.managed.seats_used = s.seats_used;
                        t.managed.worlds = s.worlds;
                        let secs = now_ms.saturating_sub(t.decided_ms) as f64 / 1000.0;
                        if t.managed.ready && !t.registered {
                            t.registered = true;
                            notes.push((
                                "registered",
                                Some(id.clone()),
                                "the allocator places bots on it".into(),
                                Some(secs),
                            ));
                        }
                        if s.seats_used > 0 && !t.seated {
                            t.seated = true;
                            self.metrics.scale_up_seconds.observe(secs);
                            notes.push((
                                "first_seats",
                                Some(id.clone()),
                                format!("{} seats used", s.seats_used),
                                Some(secs),
                            ));
                        }
                    }
                    None => {
                        t.managed.ready = false;
                        t.managed.seats_used = 0;
                        t.managed.worlds = 0;
                    }
                }
            }
        }

        // Decide.
        let active = rs.servers.values().filter(|t| t.managed.phase != Phase::Draining).count() as u32;
        let reported: Vec<&ServerSummary> =
            rs.servers.keys().filter_map(|id| by_id.get(id.as_str()).copied()).collect();
        rs.load = RegionLoad::of(&reported, active, spec.template.seats(), u64::from(spec.template.max_worlds));
        let desired = if self.allocator_ok {
            let (desired, change) = rs.sizing.size(&spec, &rs.load, active, now_ms);
            if let Some(c) = change {
                self.metrics
                    .scaling_events
                    .get_or_create(&vec![
                        ("region", name.to_owned()),
                        ("direction", c.direction().to_owned()),
                        ("policy", c.policy.clone()),
                    ])
                    .inc();
                notes.push(("scale", None, format!("{} → {} by {}: {}", c.from, c.to, c.policy, c.reason), None));
                rs.last = Some(DecisionRecord {
                    at_s: self.t_s(now_ms),
                    from: c.from,
                    to: c.to,
                    policy: c.policy,
                    reason: c.reason,
                });
            }
            desired
        } else {
            rs.sizing.hold(&spec)
        };

        // Reconcile and act.
        let managed: Vec<Managed> = rs.servers.values().map(|t| t.managed.clone()).collect();
        let want = Want {
            desired,
            min: spec.min_servers,
            max: spec.max_servers,
            version: &spec.template.version,
            rolling: spec.rolling_update,
            now_ms,
            start_limit_ms: START_LIMIT.as_millis() as u64,
            drain_limit_ms: DRAIN_LIMIT.as_millis() as u64,
        };
        let mut actions = reconcile(&want, &managed, &rs.crashes);
        if !self.allocator_ok {
            // Without the allocator's view, emptiness and readiness are unknown: drain nothing.
            actions.retain(|a| !matches!(a, Action::Drain { .. }));
        }
        for action in actions {
            match action {
                Action::Start { why } => {
                    let id = format!("{name}-{}", self.next_id);
                    self.next_id += 1;
                    let req = ServerRequest {
                        id: id.clone(),
                        region: name.to_owned(),
                        template: spec.template.clone(),
                        allocators: self.allocator.urls.clone(),
                    };
                    match self.backend.start(&req).await {
                        Ok(()) => {
                            let managed = Managed {
                                id: id.clone(),
                                version: spec.template.version.clone(),
                                phase: Phase::Starting,
                                since_ms: now_ms,
                                ready: false,
                                seats_used: 0,
                                worlds: 0,
                            };
                            rs.servers.insert(
                                id.clone(),
                                Tracked {
                                    managed,
                                    decided_ms: now_ms,
                                    stopping: false,
                                    registered: false,
                                    seated: false,
                                    ws_url: None,
                                },
                            );
                            notes.push(("start", Some(id), format!("version {}: {why}", spec.template.version), None));
                        }
                        Err(e) => {
                            rs.crashes.crashed(now_ms);
                            self.metrics.crashes.get_or_create(&metrics::region(name)).inc();
                            notes.push(("crashed", Some(id), format!("could not start: {e:#}"), None));
                        }
                    }
                }
                Action::Drain { id, why } => {
                    if let Err(e) = self.backend.drain(&id).await {
                        notes.push(("drain", Some(id.clone()), format!("drain failed: {e:#}"), None));
                    }
                    if let Some(t) = rs.servers.get_mut(&id) {
                        t.managed.phase = Phase::Draining;
                        t.managed.since_ms = now_ms;
                        t.stopping = true;
                    }
                    notes.push(("drain", Some(id), why, None));
                }
                Action::Kill { id, why } => {
                    let _ = self.backend.kill(&id).await;
                    if let Some(t) = rs.servers.get_mut(&id) {
                        if t.managed.phase == Phase::Starting {
                            rs.crashes.crashed(now_ms);
                            self.metrics.crashes.get_or_create(&metrics::region(name)).inc();
                        }
                        t.stopping = true;
                        t.managed.phase = Phase::Draining;
                    }
                    notes.push(("kill", Some(id), why, None));
                }
            }
        }

        // Record.
        let count = |p: Phase| rs.servers.values().filter(|t| t.managed.phase == p).count() as u32;
        let (starting, draining) = (count(Phase::Starting), count(Phase::Draining));
        let ready = rs.servers.values().filter(|t| t.managed.phase == Phase::Running && t.managed.ready).count() as u32;
        let seats: u64 = rs.servers.values().filter(|t| t.managed.ready).map(|_| spec.template.seats()).sum();
        let labels = metrics::region(name);
        self.metrics.desired.get_or_create(&labels).set(i64::from(desired));
        self.metrics.max_servers.get_or_create(&labels).set(i64::from(spec.max_servers));
        self.metrics.min_servers.get_or_create(&labels).set(i64::from(spec.min_servers));
        for (phase, n) in [("starting", starting), ("running", count(Phase::Running)), ("draining", draining)] {
            self.metrics
                .servers
                .get_or_create(&vec![("region", name.to_owned()), ("phase", phase.to_owned())])
                .set(i64::from(n));
        }
        self.metrics.seats_used.get_or_create(&labels).set(rs.load.seats_used as i64);
        self.metrics.seats.get_or_create(&labels).set(seats as i64);
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            t_s: self.t_s(now_ms),
            region: name.to_owned(),
            desired,
            ready,
            starting,
            draining,
            seats_used: rs.load.seats_used,
            seats,
        });
        self.regions.insert(name.to_owned(), rs);
        for (kind, server, detail, secs) in notes {
            self.event(now_ms, name, kind, server.as_deref(), detail, secs);
        }
    }

    /// Every region is at its minimum, with nothing starting or draining.
    pub fn settled(&self) -> bool {
        self.spec.regions.iter().all(|r| {
            self.regions.get(&r.name).is_some_and(|rs| {
                let ready =
                    rs.servers.values().filter(|t| t.managed.phase == Phase::Running && t.managed.ready).count();
                rs.sizing.desired() == Some(r.min_servers)
                    && rs.servers.len() == r.min_servers as usize
                    && ready == rs.servers.len()
            })
        })
    }

    /// Every region has at least its minimum of servers taking bots.
    pub fn ready(&self) -> bool {
        self.spec.regions.iter().all(|r| {
            self.regions.get(&r.name).is_some_and(|rs| {
                rs.servers.values().filter(|t| t.managed.phase == Phase::Running && t.managed.ready).count()
                    >= r.min_servers as usize
            })
        })
    }

    /// Server ids of a region, with their phase.
    pub fn servers(&self, region: &str) -> Vec<(String, Phase)> {
        self.regions
            .get(region)
            .map_or_else(Vec::new, |rs| rs.servers.values().map(|t| (t.managed.id.clone(), t.managed.phase)).collect())
    }

    pub fn status(&self, now_ms: u64) -> FleetStatus {
        let by_id: HashMap<&str, &ServerSummary> = self.view.iter().map(|s| (s.server_id.as_str(), s)).collect();
        let regions = self
            .spec
            .regions
            .iter()
            .map(|r| {
                let empty = RegionState::default();
                let rs = self.regions.get(&r.name).unwrap_or(&empty);
                let count = |p: Phase| rs.servers.values().filter(|t| t.managed.phase == p).count() as u32;
                let taking: Vec<&ServerSummary> = rs
                    .servers
                    .keys()
                    .filter_map(|id| by_id.get(id.as_str()).copied())
                    .filter(|s| takes_bots(s))
                    .collect();
                let seats: u64 = taking.iter().map(|s| u64::from(s.max_worlds) * u64::from(s.world_capacity)).sum();
                let room = taking
                    .iter()
                    .map(|s| {
                        let free = (u64::from(s.max_worlds) * u64::from(s.world_capacity))
                            .saturating_sub(u64::from(s.seats_used));
                        s.load.map_or(free, |l| free.min(u64::from(l.room)))
                    })
                    .sum();
                RegionStatus {
                    name: r.name.clone(),
                    desired: rs.sizing.desired().unwrap_or(r.min_servers),
                    min: r.min_servers,
                    max: r.max_servers,
                    version: r.template.version.clone(),
                    ready: rs.servers.values().filter(|t| t.managed.phase == Phase::Running && t.managed.ready).count()
                        as u32,
                    starting: count(Phase::Starting),
                    draining: count(Phase::Draining),
                    outdated: rs
                        .servers
                        .values()
                        .filter(|t| t.managed.phase != Phase::Draining && t.managed.version != r.template.version)
                        .count() as u32,
                    worlds: rs.load.worlds_used,
                    seats_used: rs.load.seats_used,
                    seats,
                    room,
                    utilisation: if seats == 0 { 0.0 } else { rs.load.seats_used as f64 / seats as f64 },
                    last_decision: rs.last.clone(),
                    crash_loop: rs.crashes.clone().looping(now_ms),
                    servers: rs
                        .servers
                        .values()
                        .map(|t| ServerStatus {
                            id: t.managed.id.clone(),
                            version: t.managed.version.clone(),
                            phase: match t.managed.phase {
                                Phase::Starting => "starting",
                                Phase::Running => "running",
                                Phase::Draining => "draining",
                            }
                            .into(),
                            ready: t.managed.ready,
                            seats_used: t.managed.seats_used,
                            worlds: t.managed.worlds,
                            ws_url: t.ws_url.clone(),
                        })
                        .collect(),
                }
            })
            .collect();
        FleetStatus {
            allocator: self.allocator.urls.clone(),
            uptime_s: self.t_s(now_ms),
            allocator_ok: self.allocator_ok,
            regions,
            events: self.events.iter().rev().take(50).rev().cloned().collect(),
        }
    }

    pub fn timeline(&self) -> Timeline {
        Timeline { samples: self.samples.iter().cloned().collect(), events: self.events.iter().cloned().collect() }
    }
}
