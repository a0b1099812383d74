use super::*;
use crate::nbd::server::{
    decode_client_flags, decode_info_request, decode_option, encode_export_name_reply,
    encode_greeting, encode_info_block_size, encode_info_export, encode_option_reply,
};
use crate::nbd::wire::{INFO_NAME, REP_ERROR_BIT};

const NAME: &str = "/3b2c5d6e-7f80-4912-a3b4-c5d6e7f80912?session_id=OpaqueRef:secret";
const SIZE: u64 = 8 << 20;
const FLAGS: u16 = FLAG_HAS_FLAGS | FLAG_READ_ONLY;
const SIZES: BlockSizes = BlockSizes {
    minimum: 512,
    preferred: 4096,
    maximum: 1 << 20,
};

fn reply(option: u32, code: ReplyCode, payload: &[u8]) -> Vec<u8> {
    encode_option_reply(option, code, payload)
}

/// The server's side of a successful `NBD_OPT_GO`, with an unknown and an unrequested
/// information type among the replies.
fn go_success(option: u32) -> Vec<u8> {
    let mut unknown = 99u16.to_be_bytes().to_vec();
    unknown.extend_from_slice(b"whatever");
    let mut name = INFO_NAME.to_be_bytes().to_vec();
    name.extend_from_slice(b"disk");
    [
        reply(option, ReplyCode::Info, &encode_info_export(SIZE, FLAGS)),
        reply(option, ReplyCode::Info, &unknown),
        reply(option, ReplyCode::Info, &encode_info_block_size(SIZES)),
        reply(option, ReplyCode::Info, &name),
        reply(option, ReplyCode::Ack, &[]),
    ]
    .concat()
}

struct Run {
    events: Vec<HandshakeEvent>,
    sent: Vec<u8>,
    result: Result<(), NbdError>,
}

/// Feed `stream` to `handshake` as a driver would, `chunk` bytes at a time (or only what
/// it asks for, when `greedy` is off: the TLS upgrade needs that), running the TLS upgrade
/// as a no-op. Stops at the end of the stream, the end of the handshake, or an error.
fn feed(handshake: &mut ClientHandshake, stream: &[u8], chunk: usize, greedy: bool) -> Run {
    let mut run = Run {
        events: Vec::new(),
        sent: Vec::new(),
        result: Ok(()),
    };
    let (mut buffered, mut fed) = (Vec::new(), 0);
    loop {
        run.sent.extend(handshake.take_output());
        match handshake.decode(&buffered) {
            Err(e) => {
                run.result = Err(e);
                return run;
            }
            Ok(Decoded::NeedMore(n)) => {
                assert!(n > 0);
                if fed == stream.len() {
                    return run;
                }
                let take = if greedy { chunk } else { chunk.min(n) };
                let take = take.min(stream.len() - fed);
                buffered.extend_from_slice(&stream[fed..fed + take]);
                fed += take;
            }
            Ok(Decoded::Done { value, consumed }) => {
                assert!(consumed > 0 && consumed <= buffered.len());
                buffered.drain(..consumed);
                run.events.push(value);
                match value {
                    HandshakeEvent::StartTls => handshake.tls_started().unwrap(),
                    HandshakeEvent::Ready(_) | HandshakeEvent::Probed(_) => {
                        run.sent.extend(handshake.take_output());
                        return run;
                    }
                    HandshakeEvent::Continue => {}
                }
            }
        }
    }
}

/// The messages in the client's output: its flags, then each option request.
fn options_sent(sent: &[u8]) -> (u32, Vec<(u32, Vec<u8>)>) {
    let Decoded::Done {
        value: flags,
        consumed,
    } = decode_client_flags(sent)
    else {
        panic!("no client flags in {sent:?}");
    };
    let mut rest = &sent[consumed..];
    let mut options = Vec::new();
    while !rest.is_empty() {
        let Decoded::Done { value, consumed } = decode_option(rest).unwrap() else {
            panic!("a partial option request");
        };
        options.push((value.option, value.data));
        rest = &rest[consumed..];
    }
    (flags, options)
}

fn ready(events: &[HandshakeEvent]) -> ExportInfo {
    match events.last() {
        Some(HandshakeEvent::Ready(info)) => *info,
        other => panic!("not ready: {other:?}"),
    }
}

fn failure(handshake: &mut ClientHandshake, stream: &[u8]) -> NbdError {
    match feed(handshake, stream, stream.len().max(1), true).result {
        Err(e) => e,
        Ok(()) => panic!("accepted"),
    }
}

fn go() -> ClientHandshake {
    ClientHandshake::new(NAME, false, Goal::Transmission).unwrap()
}

fn greeted() -> Vec<u8> {
    encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_vec()
}

#[test]
fn go_asks_for_block_sizes_and_learns_the_export_however_the_bytes_are_split() {
    let stream = [greeted(), go_success(OPT_GO)].concat();
    for chunk in [1, 2, 7, 20, 33, stream.len()] {
        let mut handshake = go();
        let run = feed(&mut handshake, &stream, chunk, true);
        run.result.unwrap();
        let info = ready(&run.events);
        assert_eq!(
            info,
            ExportInfo {
                size: SIZE,
                flags: FLAGS,
                block_sizes: Some(SIZES)
            }
        );
        assert!(info.read_only() && !info.can_multi_conn());
        let (flags, options) = options_sent(&run.sent);
        assert_eq!(flags, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        assert_eq!(options.len(), 1);
        assert_eq!(options[0].0, OPT_GO);
        let request = decode_info_request(OPT_GO, &options[0].1).unwrap();
        assert_eq!(request.export_name, NAME.as_bytes());
        assert_eq!(request.requests, vec![INFO_BLOCK_SIZE]);
    }
}

#[test]
fn no_zeroes_is_only_asked_for_when_offered() {
    let stream = [
        encode_greeting(FLAG_FIXED_NEWSTYLE | 0x8000).to_vec(),
        go_success(OPT_GO),
    ]
    .concat();
    let run = feed(&mut go(), &stream, 64, true);
    ready(&run.events);
    assert_eq!(options_sent(&run.sent).0, FLAG_C_FIXED_NEWSTYLE);
}

#[test]
fn a_server_without_go_gets_export_name_with_or_without_zeroes() {
    for (handshake_flags, zeroes) in [(FLAG_FIXED_NEWSTYLE, true), (0x3, false)] {
        let stream = [
            encode_greeting(handshake_flags).to_vec(),
            reply(OPT_GO, ReplyCode::Unsupported, b""),
            encode_export_name_reply(SIZE, FLAG_HAS_FLAGS, zeroes),
        ]
        .concat();
        for chunk in [1, 5, stream.len()] {
            let mut handshake = go();
            let run = feed(&mut handshake, &stream, chunk, true);
            run.result.unwrap();
            let info = ready(&run.events);
            assert_eq!((info.size, info.block_sizes), (SIZE, None));
            let (_, options) = options_sent(&run.sent);
            assert_eq!(options.len(), 2);
            assert_eq!(options[1], (OPT_EXPORT_NAME, NAME.as_bytes().to_vec()));
            // Exactly the reply was consumed: nothing left for transmission to misread.
            assert_eq!(handshake.decode(&[]).unwrap(), Decoded::NeedMore(1));
        }
    }
}

#[test]
fn tls_comes_first_and_options_follow_it() {
    let stream = [
        greeted(),
        reply(OPT_STARTTLS, ReplyCode::Ack, &[]),
        go_success(OPT_GO),
    ]
    .concat();
    let mut handshake = ClientHandshake::new(NAME, true, Goal::Transmission).unwrap();
    let run = feed(&mut handshake, &stream, 3, false);
    run.result.unwrap();
    assert!(run.events.contains(&HandshakeEvent::StartTls));
    ready(&run.events);
    let (_, options) = options_sent(&run.sent);
    let sent: Vec<u32> = options.iter().map(|o| o.0).collect();
    assert_eq!(sent, vec![OPT_STARTTLS, OPT_GO]);
    assert!(options[0].1.is_empty());
}

#[test]
fn a_refused_or_tampered_starttls_fails_instead_of_going_on_in_clear() {
    for code in [
        ReplyCode::Policy,
        ReplyCode::Unsupported,
        ReplyCode::Invalid,
    ] {
        let stream = [greeted(), reply(OPT_STARTTLS, code, b"no TLS here")].concat();
        let mut handshake = ClientHandshake::new(NAME, true, Goal::Transmission).unwrap();
        match failure(&mut handshake, &stream) {
            NbdError::Refused {
                option: OPT_STARTTLS,
                code: got,
                message,
            } => assert_eq!((got, message.as_str()), (code, "no TLS here")),
            other => panic!("{other}"),
        }
    }
    // Bytes injected after the acknowledgement, before the TLS handshake.
    let stream = [
        greeted(),
        reply(OPT_STARTTLS, ReplyCode::Ack, &[]),
        go_success(OPT_GO),
    ]
    .concat();
    let mut handshake = ClientHandshake::new(NAME, true, Goal::Transmission).unwrap();
    let e = failure(&mut handshake, &stream);
    assert!(e.to_string().contains("plain-text bytes after"), "{e}");
    // An acknowledgement carrying data.
    let stream = [greeted(), reply(OPT_STARTTLS, ReplyCode::Ack, b"x")].concat();
    let mut handshake = ClientHandshake::new(NAME, true, Goal::Transmission).unwrap();
    assert!(matches!(
        failure(&mut handshake, &stream),
        NbdError::Protocol {
            field: "option reply length",
            ..
        }
    ));
}

#[test]
fn probe_asks_info_then_aborts() {
    let stream = [
        greeted(),
        go_success(OPT_INFO),
        reply(OPT_ABORT, ReplyCode::Ack, &[]),
    ]
    .concat();
    let mut handshake = ClientHandshake::new(NAME, false, Goal::Probe).unwrap();
    let run = feed(&mut handshake, &stream, 9, true);
    run.result.unwrap();
    assert!(matches!(
        run.events.last(),
        Some(HandshakeEvent::Probed(ExportInfo { size: SIZE, .. }))
    ));
    let (_, options) = options_sent(&run.sent);
    let sent: Vec<u32> = options.iter().map(|o| o.0).collect();
    assert_eq!(sent, vec![OPT_INFO, OPT_ABORT]);
    // A server may close instead of acknowledging the abort.
    let stream = [greeted(), go_success(OPT_INFO)].concat();
    let mut handshake = ClientHandshake::new(NAME, false, Goal::Probe).unwrap();
    let run = feed(&mut handshake, &stream, stream.len(), true);
    run.result.unwrap();
    assert!(matches!(
        handshake.server_closed(0),
        Ok(HandshakeEvent::Probed(_))
    ));
}

#[test]
fn greetings_that_are_not_fixed_newstyle_are_refused_by_name() {
    let mut not_nbd = greeted();
    not_nbd[..8].copy_from_slice(b"HTTP/1.1");
    let mut oldstyle = greeted();
    oldstyle[8..16].copy_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
    let mut other = greeted();
    other[15] ^= 1;
    let plain_newstyle = encode_greeting(FLAG_NO_ZEROES).to_vec();
    for (stream, field, words) in [
        (not_nbd, "magic", "not an NBD server"),
        (oldstyle, "magic", "oldstyle"),
        (other, "magic", "expected IHAVEOPT"),
        (plain_newstyle, "handshake flags", "FIXED_NEWSTYLE"),
    ] {
        let e = failure(&mut go(), &stream);
        assert!(
            matches!(&e, NbdError::Protocol { phase: Phase::Greeting, field: f, .. } if *f == field),
            "{e}"
        );
        assert!(e.to_string().contains(words), "{e}");
    }
}

#[test]
fn malformed_option_replies_are_refused_naming_field_and_position() {
    let header = |magic: u64, option: u32, code: u32, len: u32| {
        let mut h = magic.to_be_bytes().to_vec();
        h.extend_from_slice(&option.to_be_bytes());
        h.extend_from_slice(&code.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h
    };
    let info = |payload: &[u8]| reply(OPT_GO, ReplyCode::Info, payload);
    let sizes = |minimum, preferred, maximum| {
        info(&encode_info_block_size(BlockSizes {
            minimum,
            preferred,
            maximum,
        }))
    };
    let export = info(&encode_info_export(SIZE, FLAG_HAS_FLAGS));
    let ack = reply(OPT_GO, ReplyCode::Ack, &[]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (header(0x1234, OPT_GO, 1, 0), "option reply magic"),
        (header(OPTION_REPLY_MAGIC, OPT_INFO, 1, 0), "option"),
        (
            header(OPTION_REPLY_MAGIC, OPT_GO, 3, 4099),
            "option reply length",
        ),
        (
            header(OPTION_REPLY_MAGIC, OPT_GO, 3, u32::MAX),
            "option reply length",
        ),
        (info(&[0]), "option reply length"),
        (
            info(&encode_info_export(SIZE, FLAG_HAS_FLAGS)[..11]),
            "option reply length",
        ),
        (info(&encode_info_export(SIZE, 0)), "transmission flags"),
        (
            info(&encode_info_block_size(SIZES)[..13]),
            "option reply length",
        ),
        (sizes(3, 4096, 1 << 20), "minimum block size"),
        (sizes(1 << 17, 1 << 17, 1 << 20), "minimum block size"),
        (sizes(512, 256, 1 << 20), "preferred block size"),
        (sizes(4096, 6000, 1 << 20), "preferred block size"),
        (sizes(4096, 4096, 4096 * 3 + 1), "maximum block size"),
        (sizes(4096, 4096, 0), "maximum block size"),
        (
            [export.clone(), sizes(512, 1 << 16, 4096), ack.clone()].concat(),
            "maximum block size",
        ),
        (ack.clone(), "option reply type"),
        (
            [export.clone(), reply(OPT_GO, ReplyCode::Ack, b"x")].concat(),
            "option reply length",
        ),
        (
            reply(OPT_GO, ReplyCode::Server, b"\0\0\0\0"),
            "option reply type",
        ),
        (
            reply(OPT_GO, ReplyCode::Other(77), b""),
            "option reply type",
        ),
        (
            info(&encode_info_export(SIZE, FLAG_HAS_FLAGS)).repeat(40),
            "option reply",
        ),
    ];
    for (replies, field) in cases {
        let stream = [greeted(), replies].concat();
        let e = failure(&mut go(), &stream);
        match &e {
            NbdError::Protocol {
                phase: Phase::Option(OPT_GO),
                field: f,
                offset,
                ..
            } => {
                assert_eq!(*f, field, "{e}");
                assert!(*offset >= GREETING_LEN as u64, "{e}");
            }
            other => panic!("{field}: {other}"),
        }
    }
}

#[test]
fn an_oversized_reply_is_refused_from_its_header_alone() {
    let mut header = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
    header.extend_from_slice(&OPT_GO.to_be_bytes());
    header.extend_from_slice(&(REP_ERROR_BIT | 1).to_be_bytes());
    header.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    let mut handshake = go();
    let run = feed(&mut handshake, &[greeted(), header].concat(), 1, true);
    let e = run.result.unwrap_err();
    assert!(e.to_string().contains("2147483647 bytes"), "{e}");
}

#[test]
fn error_replies_name_the_option_and_code_and_hide_the_export_name() {
    for (code, wire) in [
        (ReplyCode::UnknownExport, REP_ERROR_BIT | 6),
        (ReplyCode::TlsRequired, REP_ERROR_BIT | 5),
        (ReplyCode::Shutdown, REP_ERROR_BIT | 7),
        (ReplyCode::BlockSizeRequired, REP_ERROR_BIT | 8),
        (
            ReplyCode::OtherError(REP_ERROR_BIT | 0x42),
            REP_ERROR_BIT | 0x42,
        ),
    ] {
        let message = format!("export '{NAME}' not present\n");
        let stream = [
            greeted(),
            reply(OPT_GO, ReplyCode::from_wire(wire), message.as_bytes()),
        ]
        .concat();
        let e = failure(&mut go(), &stream);
        let shown = e.to_string();
        assert!(
            matches!(&e, NbdError::Refused { option: OPT_GO, code: c, .. } if *c == code),
            "{shown}"
        );
        assert!(shown.contains("NBD_OPT_GO") && shown.contains(&code.to_string()));
        assert!(
            shown.contains("export '<export name>' not present\\n"),
            "{shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
    }
    // NBD_OPT_INFO has no fallback.
    let stream = [greeted(), reply(OPT_INFO, ReplyCode::Unsupported, b"")].concat();
    let mut handshake = ClientHandshake::new(NAME, false, Goal::Probe).unwrap();
    assert!(matches!(
        failure(&mut handshake, &stream),
        NbdError::Refused {
            option: OPT_INFO,
            code: ReplyCode::Unsupported,
            ..
        }
    ));
}

#[test]
fn a_refusal_is_left_with_abort_and_a_violation_without() {
    let stream = [greeted(), reply(OPT_GO, ReplyCode::Policy, b"")].concat();
    let mut handshake = go();
    failure(&mut handshake, &stream);
    assert_eq!(
        handshake.abort_after_refusal(),
        Some(encode_option(OPT_ABORT, &[]))
    );
    assert_eq!(handshake.abort_after_refusal(), None);
    let stream = [greeted(), reply(OPT_GO, ReplyCode::Other(9), b"")].concat();
    let mut handshake = go();
    failure(&mut handshake, &stream);
    assert_eq!(handshake.abort_after_refusal(), None);
}

#[test]
fn a_closed_connection_says_where_the_handshake_was() {
    let mut handshake = go();
    feed(&mut handshake, &greeted()[..5], 5, true);
    assert!(
        handshake
            .server_closed(5)
            .unwrap_err()
            .to_string()
            .contains("greeting was complete (5 of 18 bytes)")
    );
    let mut handshake = go();
    feed(&mut handshake, &greeted(), 18, true);
    let e = handshake.server_closed(0).unwrap_err();
    assert!(
        matches!(&e, NbdError::Closed { phase: Phase::Option(OPT_GO), context } if context.contains("instead of replying")),
        "{e}"
    );
    let stream = [greeted(), go_success(OPT_GO)[..40].to_vec()].concat();
    let mut handshake = go();
    feed(&mut handshake, &stream, stream.len(), true);
    let e = handshake.server_closed(8).unwrap_err();
    assert!(
        e.to_string().contains("1 complete, 8 bytes of the next"),
        "{e}"
    );
}

#[test]
fn export_names_are_checked_and_never_shown() {
    assert!(ClientHandshake::new(&"x".repeat(4097), false, Goal::Transmission).is_err());
    assert!(ClientHandshake::new("a\0b", false, Goal::Transmission).is_err());
    assert!(ClientHandshake::new(&"x".repeat(4096), false, Goal::Transmission).is_ok());
    assert!(!format!("{:?}", go()).contains("secret"));
}

#[test]
fn the_largest_request_follows_the_server_and_the_default_cap() {
    let info = |block_sizes| ExportInfo {
        size: 1 << 40,
        flags: FLAG_HAS_FLAGS,
        block_sizes,
    };
    assert_eq!(info(None).max_request(), DEFAULT_MAX_REQUEST);
    assert_eq!(info(None).min_block(), 1);
    assert_eq!(info(Some(SIZES)).max_request(), 1 << 20);
    let unlimited = BlockSizes {
        minimum: 4096,
        preferred: 4096,
        maximum: u32::MAX,
    };
    assert_eq!(info(Some(unlimited)).max_request(), DEFAULT_MAX_REQUEST);
    let odd = BlockSizes {
        minimum: 4096,
        preferred: 4096,
        maximum: 4096 * 3,
    };
    assert_eq!(info(Some(odd)).max_request(), 4096 * 3);
}
