//! cargo-fuzz target `xmlrpc_decode`: runs `bodies::xmlrpc_decode`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bodies::xmlrpc_decode(data);
});
