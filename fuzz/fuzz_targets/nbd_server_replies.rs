//! cargo-fuzz target `nbd_server_replies`: runs `bodies::nbd_server_replies`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bodies::nbd_server_replies(data);
});
