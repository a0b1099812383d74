//! cargo-fuzz target `stream_decode`: runs `bodies::stream_decode`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bodies::stream_decode(data);
});
