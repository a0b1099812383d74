//! The lab host: a simulated XAPI host over real VHD chains.

pub mod sr;
