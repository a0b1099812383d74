//! cargo-fuzz target `seed_frames`: runs `bodies::seed_frames`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bodies::seed_frames(data);
});
