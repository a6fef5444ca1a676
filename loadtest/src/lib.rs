//! # arena-loadtest
//!
//! A swarm of lean bots that speak `arena.v1` to gameservers: bots join on tokio ([`bot`]), then
//! a play engine thread ([`engine`]) drives thousands of them with batched polling, sending
//! inputs on an open-loop schedule and timing how long each takes to come back acknowledged,
//! while the swarm samples the servers' CPU and memory. The binary turns it into a report (terminal table,
//! JSON, SVG chart) and checks SLOs.

pub mod bot;
pub mod engine;
pub mod local;
pub mod peek;
pub mod procstat;
pub mod quicplay;
pub mod report;
pub mod stats;
pub mod target;
pub mod wsclient;
