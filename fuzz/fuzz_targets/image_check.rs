//! Feeds arbitrary bytes to everything that looks at a whole VHD file: `check_bytes`,
//! `VhdLayer::from_bytes`, and, when the image opens, reading its entire content (capped so
//! that an iteration stays fast) through a one-layer chain. Nothing may panic, and the two views
//! must agree: what opens can be checked, and what is refused cannot check clean.

#![no_main]

use std::path::Path;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use vhdsync::image::{Chain, VhdLayer, check::check_bytes};

/// Read at most this much virtual disk per input: a corrupt footer may claim 2040 GiB.
const READ_CAP: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let checked = check_bytes(data);
    let opened = VhdLayer::from_bytes(Path::new("fuzz.vhd"), Bytes::copy_from_slice(data));
    match &opened {
        Ok(_) => assert!(checked.is_ok(), "opens but check cannot read it"),
        Err(e) => assert!(
            !matches!(&checked, Ok(report) if report.is_clean()),
            "open refuses it ({e}) but check finds it clean"
        ),
    }
    let Ok(layer) = opened else { return };
    let _ = layer.parent_locator_paths();
    let Ok(chain) = Chain::from_layers(vec![layer]) else {
        return;
    };
    let end = chain.virtual_size().min(READ_CAP);
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        chain.read_at(at, &mut buf[..n]);
        at += n as u64;
    }
    for index in 0..end.div_ceil(u64::from(chain.block_size())) as u32 {
        let _ = chain.block_data(index);
    }
});
