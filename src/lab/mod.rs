//! The lab host: a simulated XAPI host over real VHD chains.

pub mod db;
pub mod faults;
mod flusher;
pub mod http;
pub mod rpc;
pub mod sr;
pub mod state;

pub use rpc::init::{DEFAULT_SR_CAPACITY, InitReport, VifSpec, VmSpec};
pub use state::{Lab, LabError};
