//! Feeds arbitrary bytes to the seed file decoder, as given and behind a valid file header
//! (so the fuzzer reaches the frames), whole and in small chunks. The decoder must never
//! panic, must give the same payload and the same verdict however the input is split, and
//! a file it accepts must re-encode to a file that decodes to the same payload.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vhdsync::replicate::seed_file::{SeedDecoder, SeedEncoder, SeedEvent, SeedFileError, file_header};

fn decode(data: &[u8], chunk: usize) -> Result<Vec<u8>, SeedFileError> {
    let mut decoder = SeedDecoder::new();
    let mut buf = BytesMut::new();
    let mut payload = Vec::new();
    let mut push = |event: SeedEvent| {
        if let SeedEvent::Frame { data, .. } = event {
            payload.extend_from_slice(&data);
        }
    };
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(event) = decoder.decode(&mut buf)? {
            push(event);
        }
    }
    while let Some(event) = decoder.decode_eof(&mut buf)? {
        push(event);
    }
    Ok(payload)
}

fn check(data: &[u8]) {
    let whole = decode(data, data.len().max(1));
    for chunk in [1, 20, 4096] {
        let split = decode(data, chunk);
        assert_eq!(split.is_ok(), whole.is_ok(), "chunk size {chunk} changed the verdict");
        if let (Ok(a), Ok(b)) = (&split, &whole) {
            assert_eq!(a, b, "chunk size {chunk} changed the payload");
        }
    }
    if let Ok(payload) = whole
        && !payload.is_empty()
    {
        let mut encoder = SeedEncoder::new(1, 1 << 16).unwrap();
        let mut file = encoder.header().to_vec();
        for frame in payload.chunks(1 << 16) {
            file.extend_from_slice(&encoder.frame(frame).unwrap());
        }
        file.extend_from_slice(&encoder.end().0);
        assert_eq!(decode(&file, 4096).unwrap(), payload);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut framed = file_header(1 << 16).to_vec();
    framed.extend_from_slice(data);
    check(&framed);
});
