//! The fleet description: per region, how many gameservers, made from which template, sized by
//! which policy, updated how. Read from YAML or TOML; the same type is the `spec` of the
//! Kubernetes custom resource later, hence camelCase keys.
//!
//! ```yaml
//! regions:
//!   - name: eu-central-1
//!     minServers: 1
//!     maxServers: 10
//!     template: { maxWorlds: 50, worldCapacity: 30, version: "1" }
//!     autoscale:
//!       buffer: { unit: seats, size: 1500 }
//!     rollingUpdate: { maxSurge: "25%", maxUnavailable: "25%" }
//! ```

use std::fmt;

use arena_sdk::protocol::valid_id;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A whole fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetSpec {
    #[serde(default)]
    pub allocator: AllocatorSpec,
    pub regions: Vec<RegionFleet>,
    /// How often the fleet looks and acts, in milliseconds.
    #[serde(default = "default_sync_ms")]
    pub sync_period_ms: u64,
}

fn default_sync_ms() -> u64 {
    1000
}

/// The allocator the fleet runs (local backend) or points its servers at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocatorSpec {
    /// Redis shared by allocator replicas; without it, the registry lives in the allocator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Seconds without a heartbeat after which a server's worlds may move (the allocator's
    /// default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_timeout_secs: Option<u64>,
    /// More arguments for `arena-allocator serve`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// The fleet of one region — also the spec of the Kubernetes custom resource `ArenaFleet`
/// (`arena.dev/v1alpha1`, one per region; see `crd.rs`).
// Clippy reads kube's repeated `printcolumn(type_ = …)` as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[kube(
    group = "arena.dev",
    version = "v1alpha1",
    kind = "ArenaFleet",
    namespaced,
    status = "crate::crd::ArenaFleetStatus",
    derive = "PartialEq",
    shortname = "afl",
    category = "arena",
    doc = "A region's fleet of Arena gameservers: how many, made from which template, sized by which policy, updated how",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desired"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(name = "Draining", type_ = "integer", json_path = ".status.draining"),
    printcolumn(name = "Seats used", type_ = "integer", json_path = ".status.seatsUsed"),
    printcolumn(name = "Seats", type_ = "integer", json_path = ".status.seats"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct RegionFleet {
    pub name: String,
    pub min_servers: u32,
    pub max_servers: u32,
    pub template: ServerTemplate,
    pub autoscale: Policy,
    /// Seconds a lower count must be what the policy wants before servers go: the count follows
    /// the highest the policy wanted over this window (up at once, down after it), so a load
    /// that dips for a moment does not drain servers that are needed again a moment later.
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay_secs: u64,
    #[serde(default)]
    pub rolling_update: RollingUpdate,
}

fn default_scale_down_delay() -> u64 {
    30
}

/// What one gameserver is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTemplate {
    #[serde(default = "default_max_worlds")]
    pub max_worlds: u32,
    #[serde(default = "default_world_capacity")]
    pub world_capacity: u32,
    #[serde(default = "default_tick_hz")]
    pub tick_hz: u32,
    /// The template's version: servers of another version are replaced by a rolling update.
    #[serde(default = "default_version")]
    pub version: String,
    /// More arguments for `arena-gameserver serve` (storage, limits, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

fn default_max_worlds() -> u32 {
    50
}
fn default_world_capacity() -> u32 {
    30
}
fn default_tick_hz() -> u32 {
    20
}
fn default_version() -> String {
    "1".into()
}

impl ServerTemplate {
    /// Seats of one server.
    pub fn seats(&self) -> u64 {
        u64::from(self.max_worlds) * u64::from(self.world_capacity)
    }
}

/// How a region's size is decided: a map with exactly one key, `{buffer: {...}}`,
/// `{chain: [...]}`, in every format (YAML's own `!Tag` enums would not fit a Kubernetes schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PolicyKey", into = "PolicyKey")]
pub enum Policy {
    /// Keep a buffer of free capacity (Agones' Buffer policy).
    Buffer(BufferPolicy),
    /// Add a server when most servers are busy, remove one after a quiet window.
    Threshold(ThresholdPolicy),
    /// Another policy whose bounds change in time windows.
    Schedule(SchedulePolicy),
    /// The first policy that applies now (a schedule applies inside its windows only).
    Chain(Vec<Policy>),
}

/// A policy as written: one of these keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    buffer: Option<BufferPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    threshold: Option<ThresholdPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<SchedulePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<Vec<Policy>>,
}

impl TryFrom<PolicyKey> for Policy {
    type Error = String;

    fn try_from(k: PolicyKey) -> Result<Self, String> {
        let mut found = Vec::new();
        if let Some(p) = k.buffer {
            found.push(Policy::Buffer(p));
        }
        if let Some(p) = k.threshold {
            found.push(Policy::Threshold(p));
        }
        if let Some(p) = k.schedule {
            found.push(Policy::Schedule(p));
        }
        if let Some(p) = k.chain {
            found.push(Policy::Chain(p));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err("a policy needs one of buffer, threshold, schedule, chain".into()),
            _ => Err("a policy has exactly one of buffer, threshold, schedule, chain".into()),
        }
    }
}

impl From<Policy> for PolicyKey {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Buffer(p) => PolicyKey { buffer: Some(p), ..PolicyKey::default() },
            Policy::Threshold(p) => PolicyKey { threshold: Some(p), ..PolicyKey::default() },
            Policy::Schedule(p) => PolicyKey { schedule: Some(p), ..PolicyKey::default() },
            Policy::Chain(p) => PolicyKey { chain: Some(p), ..PolicyKey::default() },
        }
    }
}

/// Policies nest (a chain of schedules of buffers …), but a Kubernetes schema cannot refer to
/// itself: it describes this many levels below the top one, and what lies deeper is checked by
/// `validate` alone.
const SCHEMA_DEPTH: usize = 2;

impl JsonSchema for Policy {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Policy".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        policy_schema(generator, SCHEMA_DEPTH)
    }
}

fn policy_schema(generator: &mut SchemaGenerator, depth: usize) -> Schema {
    let nested = if depth == 0 {
        json_schema!({
            "type": "object",
            "description": "A nested policy (checked by the operator)",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    } else {
        policy_schema(generator, depth - 1)
    };
    json_schema!({
        "type": "object",
        "description": "Exactly one of buffer, threshold, schedule, chain",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            "buffer": generator.subschema_for::<BufferPolicy>(),
            "threshold": generator.subschema_for::<ThresholdPolicy>(),
            "schedule": {
                "type": "object",
                "description": "Another policy whose bounds change in time windows",
                "required": ["windows", "policy"],
                "properties": {
                    "windows": { "type": "array", "items": generator.subschema_for::<Window>() },
                    "policy": nested.clone(),
                },
            },
            "chain": {
                "type": "array",
                "description": "The first policy that applies now",
                "items": nested,
            },
        },
    })
}

impl JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A count, or a percentage written \"20%\"",
            "x-kubernetes-int-or-string": true,
        })
    }
}

/// What a buffer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Unit {
    /// Free seats (bounded by what the servers' tick budgets allow).
    Seats,
    /// Free world slots.
    Worlds,
    /// Servers without bots.
    Servers,
}

/// A count, or a percentage written `"20%"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawAmount", into = "RawAmount")]
pub enum Amount {
    Count(u32),
    Percent(f64),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawAmount {
    Count(u32),
    Text(String),
}

impl TryFrom<RawAmount> for Amount {
    type Error = String;
    fn try_from(raw: RawAmount) -> Result<Self, String> {
        match raw {
            RawAmount::Count(n) => Ok(Amount::Count(n)),
            RawAmount::Text(t) => {
                let t = t.trim();
                if let Some(p) = t.strip_suffix('%') {
                    let p: f64 = p.trim().parse().map_err(|_| format!("{t:?} is not a percentage"))?;
                    if (0.0..=100.0).contains(&p) {
                        return Ok(Amount::Percent(p));
                    }
                    return Err(format!("{t:?}: a percentage is between 0% and 100%"));
                }
                t.parse().map(Amount::Count).map_err(|_| format!("{t:?} is neither a count nor a percentage"))
            }
        }
    }
}

impl From<Amount> for RawAmount {
    fn from(a: Amount) -> Self {
        match a {
            Amount::Count(n) => RawAmount::Count(n),
            Amount::Percent(p) => RawAmount::Text(format!("{p}%")),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BufferPolicy {
    pub unit: Unit,
    /// Free capacity to keep: a count of the unit, or a share of the total.
    pub size: Amount,
}

/// The plan's threshold policy: "scale up when 70 % of servers reach 80 % capacity; scale down
/// when under 30 % utilisation for 10 minutes; 5 minute cooldown".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThresholdPolicy {
    /// A server counts as busy at this utilisation (0–1).
    #[serde(default = "default_busy_at")]
    pub busy_at: f64,
    /// Add servers when this share (0–1) of servers is busy.
    #[serde(default = "default_busy_share")]
    pub busy_share: f64,
    /// Remove a server when the region's utilisation stays below this (0–1) ...
    #[serde(default = "default_idle_below")]
    pub idle_below: f64,
    /// ... for this many seconds.
    #[serde(default = "default_idle_window")]
    pub idle_window_secs: u64,
    /// Seconds after a change before the next.
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: u64,
    /// Servers added or removed at a time.
    #[serde(default = "default_step")]
    pub step: u32,
}

fn default_busy_at() -> f64 {
    0.8
}
fn default_busy_share() -> f64 {
    0.7
}
fn default_idle_below() -> f64 {
    0.3
}
fn default_idle_window() -> u64 {
    600
}
fn default_cooldown() -> u64 {
    300
}
fn default_step() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulePolicy {
    pub windows: Vec<Window>,
    pub policy: Box<Policy>,
}

/// A time window (UTC), every day or on some weekdays; `to` before `from` wraps midnight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Window {
    /// `mon` … `sun`; every day when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    /// `HH:MM`, UTC.
    pub from: String,
    /// `HH:MM`, UTC (exclusive).
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_servers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_servers: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Monday = 0.
    pub fn index(self) -> u64 {
        self as u64
    }
}

/// Minutes after midnight of `"HH:MM"`.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

/// How a changed template replaces servers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpdate {
    /// Servers started above the desired count while old ones are replaced.
    pub max_surge: Amount,
    /// Ready servers that may be missing below the desired count meanwhile.
    pub max_unavailable: Amount,
}

impl Default for RollingUpdate {
    fn default() -> Self {
        RollingUpdate { max_surge: Amount::Percent(25.0), max_unavailable: Amount::Percent(25.0) }
    }
}

impl RollingUpdate {
    /// (surge, unavailable) for `desired` servers: surge rounds up, unavailable down, and they
    /// are never both 0.
    pub fn bounds(&self, desired: u32) -> (u32, u32) {
        let of = |a: Amount, up: bool| match a {
            Amount::Count(n) => n,
            Amount::Percent(p) => {
                let x = f64::from(desired) * p / 100.0;
                (if up { x.ceil() } else { x.floor() }) as u32
            }
        };
        let (surge, unavailable) = (of(self.max_surge, true), of(self.max_unavailable, false));
        if surge == 0 && unavailable == 0 { (1, 0) } else { (surge, unavailable) }
    }
}

/// A description that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn bad(msg: impl Into<String>) -> SpecError {
    SpecError(msg.into())
}

impl FleetSpec {
    /// Read a description: YAML, TOML or JSON, told apart by `name`'s extension (YAML when it
    /// has none of theirs), then checked.
    pub fn parse(text: &str, name: &str) -> Result<Self, SpecError> {
        let spec: FleetSpec = if name.ends_with(".toml") {
            toml::from_str(text).map_err(|e| bad(format!("{name}: {e}")))?
        } else if name.ends_with(".json") {
            serde_json::from_str(text).map_err(|e| bad(format!("{name}: {e}")))?
        } else {
            yaml_serde::from_str(text).map_err(|e| bad(format!("{name}: {e}")))?
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The description as YAML.
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self).unwrap_or_else(|e| format!("# cannot write the spec: {e}\n"))
    }

    /// Two regions on loopback, each from one server up to eight of 50 worlds × 30 seats, kept
    /// one server's worth of seats ahead of the load.
    pub fn embedded_default() -> Self {
        let region = |name: &str| RegionFleet {
            name: name.into(),
            min_servers: 1,
            max_servers: 8,
            template: ServerTemplate {
                max_worlds: 50,
                world_capacity: 30,
                tick_hz: 20,
                version: "1".into(),
                args: Vec::new(),
            },
            autoscale: Policy::Buffer(BufferPolicy { unit: Unit::Seats, size: Amount::Count(1500) }),
            scale_down_delay_secs: default_scale_down_delay(),
            rolling_update: RollingUpdate::default(),
        };
        FleetSpec {
            allocator: AllocatorSpec::default(),
            regions: vec![region("local-a"), region("local-b")],
            sync_period_ms: default_sync_ms(),
        }
    }

    pub fn region(&self, name: &str) -> Option<&RegionFleet> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Check every field; the first problem found.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.regions.is_empty() {
            return Err(bad("regions: at least one region"));
        }
        if !(100..=60_000).contains(&self.sync_period_ms) {
            return Err(bad("syncPeriodMs: between 100 and 60000"));
        }
        for (i, r) in self.regions.iter().enumerate() {
            let at = format!("regions[{i}] ({})", r.name);
            if self.regions[..i].iter().any(|o| o.name == r.name) {
                return Err(bad(format!("{at}: region named twice")));
            }
            r.check(&at)?;
        }
        Ok(())
    }
}

impl RegionFleet {
    /// Check one region's fields (the spec of a Kubernetes resource is one region); the first
    /// problem found.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.check(&format!("region {}", self.name))
    }

    fn check(&self, at: &str) -> Result<(), SpecError> {
        if !valid_id(&self.name) {
            return Err(bad(format!("{at}: name must be 1–64 of A-Z a-z 0-9 _ . : -")));
        }
        if self.max_servers == 0 || self.min_servers > self.max_servers || self.max_servers > 1000 {
            return Err(bad(format!("{at}: need 0 ≤ minServers ≤ maxServers, 1 ≤ maxServers ≤ 1000")));
        }
        let t = &self.template;
        if !(1..=10_000).contains(&t.max_worlds) || !(1..=1000).contains(&t.world_capacity) {
            return Err(bad(format!("{at}: template: maxWorlds 1–10000, worldCapacity 1–1000")));
        }
        if !(1..=60).contains(&t.tick_hz) {
            return Err(bad(format!("{at}: template: tickHz 1–60")));
        }
        if t.version.is_empty() || t.version.len() > 64 || !valid_id(&t.version) {
            return Err(bad(format!("{at}: template: version must be 1–64 of A-Z a-z 0-9 _ . : -")));
        }
        validate_policy(&self.autoscale, &format!("{at}: autoscale"), 0)?;
        if self.scale_down_delay_secs > 86_400 {
            return Err(bad(format!("{at}: scaleDownDelaySecs: at most 86400 (a day)")));
        }
        for a in [self.rolling_update.max_surge, self.rolling_update.max_unavailable] {
            if let Amount::Count(n) = a
                && n > 1000
            {
                return Err(bad(format!("{at}: rollingUpdate: at most 1000")));
            }
        }
        Ok(())
    }
}

fn validate_policy(p: &Policy, at: &str, depth: usize) -> Result<(), SpecError> {
    if depth > 8 {
        return Err(bad(format!("{at}: policies nested deeper than 8")));
    }
    let share = |x: f64, what: &str| {
        if (0.0..=1.0).contains(&x) { Ok(()) } else { Err(bad(format!("{at}: {what} is a share between 0 and 1"))) }
    };
    match p {
        Policy::Buffer(b) => match b.size {
            Amount::Percent(p) if p >= 100.0 => Err(bad(format!("{at}: buffer: a percentage below 100%"))),
            Amount::Count(n) if n > 10_000_000 => Err(bad(format!("{at}: buffer: at most 10000000"))),
            _ => Ok(()),
        },
        Policy::Threshold(t) => {
            share(t.busy_at, "busyAt")?;
            share(t.busy_share, "busyShare")?;
            share(t.idle_below, "idleBelow")?;
            if t.idle_below >= t.busy_at {
                return Err(bad(format!("{at}: idleBelow must be below busyAt")));
            }
            if t.step == 0 || t.step > 100 {
                return Err(bad(format!("{at}: step 1–100")));
            }
            Ok(())
        }
        Policy::Schedule(s) => {
            if s.windows.is_empty() {
                return Err(bad(format!("{at}: schedule: at least one window")));
            }
            for (i, w) in s.windows.iter().enumerate() {
                if parse_hhmm(&w.from).is_none() || parse_hhmm(&w.to).is_none() {
                    return Err(bad(format!("{at}: schedule.windows[{i}]: from and to are HH:MM (UTC)")));
                }
                if let (Some(lo), Some(hi)) = (w.min_servers, w.max_servers)
                    && lo > hi
                {
                    return Err(bad(format!("{at}: schedule.windows[{i}]: minServers > maxServers")));
                }
            }
            validate_policy(&s.policy, &format!("{at}: schedule.policy"), depth + 1)
        }
        Policy::Chain(list) => {
            if list.is_empty() {
                return Err(bad(format!("{at}: chain: at least one policy")));
            }
            for (i, p) in list.iter().enumerate() {
                validate_policy(p, &format!("{at}: chain[{i}]"), depth + 1)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid_and_round_trips_through_yaml() {
        let spec = FleetSpec::embedded_default();
        spec.validate().unwrap();
        let again = FleetSpec::parse(&spec.to_yaml(), "fleet.yaml").unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn yaml_and_toml_read_the_same_fleet() {
        let yaml = r#"
regions:
  - name: eu
    minServers: 1
    maxServers: 6
    template: { maxWorlds: 50, worldCapacity: 30, version: "2" }
    autoscale:
      chain:
        - schedule:
            windows: [{ days: [sat, sun], from: "18:00", to: "23:30", minServers: 3 }]
            policy: { buffer: { unit: seats, size: "20%" } }
        - threshold: { cooldownSecs: 60 }
    rollingUpdate: { maxSurge: 1, maxUnavailable: "0%" }
"#;
        let toml = r#"
[[regions]]
name = "eu"
minServers = 1
maxServers = 6
template = { maxWorlds = 50, worldCapacity = 30, version = "2" }
rollingUpdate = { maxSurge = 1, maxUnavailable = "0%" }

[[regions.autoscale.chain]]
[regions.autoscale.chain.schedule]
windows = [{ days = ["sat", "sun"], from = "18:00", to = "23:30", minServers = 3 }]
policy = { buffer = { unit = "seats", size = "20%" } }

[[regions.autoscale.chain]]
threshold = { cooldownSecs = 60 }
"#;
        let a = FleetSpec::parse(yaml, "f.yaml").unwrap();
        let b = FleetSpec::parse(toml, "f.toml").unwrap();
        assert_eq!(a, b);
        let Policy::Chain(chain) = &a.regions[0].autoscale else { panic!("{:?}", a.regions[0].autoscale) };
        assert_eq!(chain.len(), 2);
        let Policy::Threshold(t) = &chain[1] else { panic!() };
        assert_eq!((t.cooldown_secs, t.busy_at, t.idle_window_secs), (60, 0.8, 600));
        assert_eq!(a.regions[0].rolling_update.bounds(4), (1, 0));
    }

    #[test]
    fn bad_descriptions_say_what_is_wrong() {
        let base = FleetSpec::embedded_default();
        let with = |f: &dyn Fn(&mut FleetSpec)| {
            let mut s = base.clone();
            f(&mut s);
            s.validate().unwrap_err().0
        };
        assert!(with(&|s| s.regions[0].min_servers = 9).contains("minServers"));
        assert!(with(&|s| s.regions[1].name = "local-a".into()).contains("twice"));
        assert!(with(&|s| s.regions[0].name = "no spaces".into()).contains("name"));
        assert!(with(&|s| s.regions[0].template.world_capacity = 0).contains("worldCapacity"));
        assert!(
            with(&|s| s.regions[0].autoscale =
                Policy::Buffer(BufferPolicy { unit: Unit::Seats, size: Amount::Percent(100.0) }))
            .contains("below 100%")
        );
        let region = |autoscale: &str| {
            format!("regions: [{{name: a, minServers: 1, maxServers: 2, template: {{}}, autoscale: {autoscale}}}]")
        };
        let err = FleetSpec::parse(&region(r#"{buffer: {unit: seats, size: "x%"}}"#), "f.yaml").unwrap_err();
        assert!(err.0.contains("percentage"), "{err}");
        let err = FleetSpec::parse(&region("{buffer: {unit: seats, size: 2}, threshold: {}}"), "f.yaml").unwrap_err();
        assert!(err.0.contains("exactly one"), "{err}");
        let err = FleetSpec::parse(&region("{}"), "f.yaml").unwrap_err();
        assert!(err.0.contains("needs one of"), "{err}");
        let err = FleetSpec::parse("regions: []\nsurprise: 1", "f.yaml").unwrap_err();
        assert!(err.0.contains("surprise"), "{err}");
    }

    #[test]
    fn rolling_update_bounds_round_like_kubernetes() {
        let r = RollingUpdate::default();
        assert_eq!(r.bounds(4), (1, 1));
        assert_eq!(r.bounds(3), (1, 0));
        assert_eq!(r.bounds(10), (3, 2));
        let none = RollingUpdate { max_surge: Amount::Count(0), max_unavailable: Amount::Count(0) };
        assert_eq!(none.bounds(5), (1, 0), "never stuck");
        assert_eq!(parse_hhmm("09:30"), Some(570));
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("9:30"), None);
    }
}
