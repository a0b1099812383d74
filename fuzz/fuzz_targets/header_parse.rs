//! Feeds arbitrary bytes to the dynamic header, parent locator, BAT and batmap parsers. None
//! may panic or allocate from an unchecked count; whatever parses must re-encode to bytes that
//! parse back to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhdsync::vhd::batmap::BatmapHeader;
use vhdsync::vhd::{Bat, DynamicHeader, ones_complement_checksum};

fuzz_target!(|data: &[u8]| {
    header(data);
    // Also with a valid cookie and checksum, so that inputs reach the field checks.
    if let Some(head) = data.get(..1024) {
        let mut sealed = head.to_vec();
        sealed[..8].copy_from_slice(b"cxsparse");
        let sum = ones_complement_checksum(&sealed, 36);
        sealed[36..40].copy_from_slice(&sum.to_be_bytes());
        header(&sealed);
    }
    // The first four bytes as the entry count: up to u32::MAX, which must fail before sizing.
    let entries = data
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let table = data.get(4..).unwrap_or_default();
    if let Ok(bat) = Bat::parse(table, entries, 1536) {
        assert_eq!(Bat::parse(&bat.encode(), entries, 1536).as_ref(), Ok(&bat));
    }
    if let Ok(Some(batmap)) = BatmapHeader::parse(data, 2048) {
        assert_eq!(
            BatmapHeader::parse(&batmap.encode(), 2048),
            Ok(Some(batmap))
        );
    }
});

/// Parse, re-encode and re-parse a header; decode every locator with the input as payload.
fn header(bytes: &[u8]) {
    let Ok(header) = DynamicHeader::parse(bytes, 512) else {
        return;
    };
    let again = DynamicHeader::parse(&header.encode(), 512).expect("an encoded header parses");
    assert_eq!(
        DynamicHeader {
            checksum: again.checksum,
            ..header.clone()
        },
        again
    );
    for (i, locator) in header.parent_locators.iter().enumerate() {
        let _ = locator.reserved_bytes(i as u8, 1088);
        let _ = locator.decode_path(i as u8, bytes, 0);
    }
}
