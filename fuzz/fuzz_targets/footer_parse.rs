//! cargo-fuzz target `footer_parse`: runs `bodies::footer_parse`, the body tests/fuzz_smoke.rs also runs.

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bodies::footer_parse(data);
});
