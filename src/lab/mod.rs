//! The lab host: a simulated XAPI host over real VHD chains.

mod boot;
pub mod db;
pub mod faults;
mod flusher;
pub mod http;
pub mod nbd;
pub mod rpc;
pub mod sr;
pub mod state;

pub use db::DEFAULT_BOOT_DELAY;
pub use rpc::init::{DEFAULT_SR_CAPACITY, Firmware, InitConfig, InitReport, VifSpec, VmSpec};
pub use state::{Lab, LabError};
