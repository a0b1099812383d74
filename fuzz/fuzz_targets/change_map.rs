//! cargo-fuzz target `change_map`: runs `bodies::change_map`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bodies::change_map(data);
});
