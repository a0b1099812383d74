//! cargo-fuzz target `header_parse`: runs `bodies::header_parse`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bodies::header_parse(data);
});
