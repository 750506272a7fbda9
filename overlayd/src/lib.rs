//! overlayd: a user-space VXLAN overlay daemon, drop-in for Flannel's vxlan backend.
//!
//! Layers: `wire` (byte views), `fdb` (forwarding snapshot), `path` (per-packet decisions,
//! I/O-free), `sys` (the only unsafe code: TAP, UDP, netlink), `worker` (one thread per TAP
//! queue), `control` (config, node source, reconcile, signals).
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod control;
pub mod fdb;
pub mod fuzz_targets;
pub mod health;
pub mod http;
pub mod metrics;
pub mod netfilter;
pub mod observe;
pub mod path;
pub mod privs;
pub mod stats;
pub mod status;
pub mod sys;
pub mod wire;
pub mod worker;
