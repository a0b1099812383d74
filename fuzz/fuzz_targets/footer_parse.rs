//! Feeds arbitrary bytes to the footer parser and to footer location (end footer, 511-byte
//! footers, fallback to the copy at offset 0). Neither may panic, and a footer that parses must
//! re-encode to bytes that parse back to the same footer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhdsync::image::locate_footer;
use vhdsync::vhd::{Footer, ones_complement_checksum};

fuzz_target!(|data: &[u8]| {
    let _ = locate_footer(data);
    round_trip(data);
    // Also with a valid cookie and checksum, so that inputs reach the field checks instead of
    // nearly all stopping at the checksum.
    if let Some(head) = data.get(..512) {
        let mut sealed = head.to_vec();
        sealed[..8].copy_from_slice(b"conectix");
        let sum = ones_complement_checksum(&sealed, 64);
        sealed[64..68].copy_from_slice(&sum.to_be_bytes());
        round_trip(&sealed);
    }
});

fn round_trip(bytes: &[u8]) {
    if let Ok((footer, _)) = Footer::parse(bytes, 0) {
        let (again, _) = Footer::parse(&footer.encode(), 0).expect("an encoded footer parses");
        assert_eq!(
            Footer {
                checksum: again.checksum,
                ..footer
            },
            again
        );
    }
}
