//! Replication jobs: a cron-run cycle per VM that snapshots the source, sends each disk's
//! changed blocks into the protected live replica on the target, commits it with Xen
//! Orchestra's metadata and snapshots it there (XO 6.3+'s layout), so either tool can
//! continue the other's replica chains.
//!
//! [`keys`], [`plan`], [`layout`] and [`networks`] are pure (floor 1); `inventory`, `replica` and `commit`
//! read and write the hosts through `xapi::ops`; [`run`] (the cycle), [`seed`] and
//! [`failover`] orchestrate them, reading the time only through a [`clock::Clock`].

pub mod clock;
pub(crate) mod commit;
pub(crate) mod devices;
pub(crate) mod error;
pub mod exposition;
pub mod failover;
pub mod health;
pub(crate) mod inventory;
pub mod job;
pub mod keys;
pub mod layout;
pub mod lease;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod monitor;
pub mod networks;
pub mod op_error;
pub mod plan;
pub mod preflight;
pub(crate) mod replica;
pub mod run;
pub mod runner;
pub mod seed;
pub mod seed_file;
pub mod seed_offline;
pub mod selection;
pub mod transport;
