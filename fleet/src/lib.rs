//! # arena-fleet
//!
//! Per-region fleets of gameservers that size themselves, update without losing a bot, and
//! come back from crashes.
//!
//! - [`spec`]: the fleet description (YAML or TOML; the Kubernetes resource's spec later);
//! - [`load`]: a region's load and measured capacity, from the allocator's view;
//! - [`policy`]: autoscaling policies — Buffer, Threshold, Schedule, Chain — pure, each
//!   decision with its reason;
//! - [`reconcile`]: desired servers and observed servers → start, drain, kill; rolling updates;
//!   crash backoff — pure;
//! - [`sizing`]: a region's count from its policy, held by the scale-down window — pure;
//! - [`allocator`]: the allocator's view, and a dead server's farewell;
//! - [`controller`]: the thin loop that looks, decides and acts through a [`backend`];
//! - [`local`]: the local backend (processes on this machine) and the allocator it runs;
//! - [`api`], [`status`], [`chart`], [`metrics`]: what an operator sees;
//! - [`up`]: `arena-fleet up`;
//! - [`crd`] and [`operator`]: the fleet on Kubernetes — the `ArenaFleet` custom resource and
//!   `arena-fleet operator`, which runs each region's gameservers as pods.

pub mod allocator;
pub mod api;
pub mod backend;
pub mod chart;
pub mod controller;
pub mod crd;
pub mod load;
pub mod local;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod reconcile;
pub mod sizing;
pub mod spec;
pub mod status;
pub mod up;
