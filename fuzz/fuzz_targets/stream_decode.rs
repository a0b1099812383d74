//! Feeds arbitrary bytes to the VHD stream decoder, whole and in small chunks. The decoder
//! must never panic, must see the same events however the input is split, and must end every
//! input with either the final footer or an error.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use vhdsync::stream::{StreamDecoder, StreamEvent};

/// The events of `data` fed `chunk` bytes at a time, and whether the stream ended cleanly.
fn decode(data: &[u8], chunk: usize) -> (Vec<StreamEvent>, bool) {
    let mut decoder = StreamDecoder::new();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(_) => return (events, false),
            }
        }
    }
    loop {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(event)) => events.push(event),
            Ok(None) => break,
            Err(_) => return (events, false),
        }
    }
    let ended = matches!(events.last(), Some(StreamEvent::End(_)));
    assert!(ended, "a clean EOF comes only after the final footer");
    assert_eq!(decoder.total_len(), Some(data.len() as u64));
    (events, true)
}

fuzz_target!(|data: &[u8]| {
    let (whole, whole_ok) = decode(data, data.len().max(1));
    for chunk in [1, 511, 4096] {
        let (split, split_ok) = decode(data, chunk);
        assert_eq!(split_ok, whole_ok, "chunk size {chunk} changed the outcome");
        if whole_ok {
            assert_eq!(split, whole, "chunk size {chunk} changed the events");
        }
    }
});
