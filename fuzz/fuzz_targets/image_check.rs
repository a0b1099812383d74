//! cargo-fuzz target `image_check`: runs `bodies::image_check`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bodies::image_check(data);
});
