//! cargo-fuzz target `jsonrpc_decode`: runs `bodies::jsonrpc_decode`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bodies::jsonrpc_decode(data);
});
