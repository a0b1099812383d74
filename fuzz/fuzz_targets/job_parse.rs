//! cargo-fuzz target `job_parse`: runs `bodies::job_parse`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bodies::job_parse(data);
});
