//! The server's side of the fixed newstyle handshake, as a state machine over bytes: the
//! driver sends [`greeting`], feeds what the client sent to [`Negotiation::decode`], and acts
//! on each [`Step`]. Looking an export up is the driver's (it needs the lab): the machine asks
//! with [`Step::Lookup`] and takes the answer in [`Negotiation::looked_up`].
//!
//! What the lab's server speaks, after xapi-nbd: `NBD_OPT_STARTTLS` (required first when the
//! NBD network's purpose is `nbd`, refused with `NBD_REP_ERR_POLICY` under `insecure_nbd`),
//! `NBD_OPT_GO` and `NBD_OPT_INFO` (export size and flags, and the block size constraints
//! when asked: 512-byte alignment, which xapi-nbd needs without saying so, and reads of at
//! most 32 MiB), `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`; any other option gets
//! `NBD_REP_ERR_UNSUP`. An export that cannot be served (an invalid session, an unknown VDI,
//! one whose data was destroyed) closes the connection without a reply, as xapi-nbd does.
//!
//! Bounds: option data above `nbd::server::MAX_OPTION_DATA` and more than [`MAX_OPTIONS`]
//! options are refused by closing the connection, so a client can make the driver hold at
//! most one option.

use crate::nbd::BlockSizes;
use crate::nbd::NbdError;
use crate::nbd::server::{
    decode_client_flags, decode_info_request, decode_option, encode_export_name_reply,
    encode_greeting, encode_info_block_size, encode_info_export, encode_option_reply,
};
use crate::nbd::wire::{
    Decoded, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_HAS_FLAGS,
    FLAG_NO_ZEROES, FLAG_READ_ONLY, GREETING_LEN, INFO_BLOCK_SIZE, OPT_ABORT, OPT_EXPORT_NAME,
    OPT_GO, OPT_INFO, OPT_STARTTLS, ReplyCode,
};

/// The most options one connection may send before entering transmission.
pub(super) const MAX_OPTIONS: u32 = 64;

/// The block size constraints of every export.
pub(super) const BLOCK_SIZES: BlockSizes = BlockSizes {
    minimum: 512,
    preferred: 64 << 10,
    maximum: 32 << 20,
};

/// The transmission flags of every export: read-only.
pub(super) const EXPORT_FLAGS: u16 = FLAG_HAS_FLAGS | FLAG_READ_ONLY;

/// The greeting that opens every connection.
pub(super) fn greeting() -> [u8; GREETING_LEN] {
    encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
}

/// Whether the connection must upgrade to TLS before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Security {
    /// The NBD network's purpose is `nbd`.
    Tls,
    /// The purpose is `insecure_nbd`.
    Plain,
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Send these bytes (perhaps none) and decode on.
    Reply(Vec<u8>),
    /// Send these bytes (the acknowledgement of `NBD_OPT_STARTTLS`), run the TLS handshake,
    /// then decode on.
    StartTls(Vec<u8>),
    /// Look up this export, and hand the answer to [`Negotiation::looked_up`].
    Lookup(Lookup),
    /// Send these bytes and enter transmission with the export looked up last.
    Transmit(Vec<u8>),
    /// Send these bytes, then close the connection.
    ReplyAndClose(Vec<u8>),
    /// Close the connection without a word, for this reason (for the logs).
    Close(&'static str),
}

/// An export the client asked for. Its `Debug` hides the name, which carries a session.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Lookup {
    pub option: u32,
    pub name: Vec<u8>,
    /// The client asked for the block size constraints (`NBD_INFO_BLOCK_SIZE`).
    pub block_sizes: bool,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("option", &self.option)
            .field("name_len", &self.name.len())
            .field("block_sizes", &self.block_sizes)
            .finish()
    }
}

#[derive(Debug)]
pub(super) struct Negotiation {
    security: Security,
    tls_active: bool,
    client_flags: Option<u32>,
    options: u32,
}

impl Negotiation {
    pub fn new(security: Security) -> Negotiation {
        Negotiation {
            security,
            tls_active: false,
            client_flags: None,
            options: 0,
        }
    }

    /// Decode the client's next message from `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded<Step>, NbdError> {
        if self.client_flags.is_none() {
            let (value, consumed) = match decode_client_flags(input) {
                Decoded::NeedMore(n) => return Ok(Decoded::NeedMore(n)),
                Decoded::Done { value, consumed } => (value, consumed),
            };
            self.client_flags = Some(value);
            let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
            let step = if value & FLAG_C_FIXED_NEWSTYLE == 0 {
                Step::Close("the client does not speak fixed newstyle")
            } else if value & !known != 0 {
                Step::Close("the client sent unknown flags")
            } else {
                Step::Reply(Vec::new())
            };
            return Ok(Decoded::Done {
                value: step,
                consumed,
            });
        }
        let (request, consumed) = match decode_option(input)? {
            Decoded::NeedMore(n) => return Ok(Decoded::NeedMore(n)),
            Decoded::Done { value, consumed } => (value, consumed),
        };
        self.options += 1;
        let step = if self.options > MAX_OPTIONS {
            Step::Close("too many options")
        } else {
            self.option(request.option, &request.data)
        };
        Ok(Decoded::Done {
            value: step,
            consumed,
        })
    }

    /// The TLS handshake after [`Step::StartTls`] succeeded.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
    }

    /// The answer to a [`Step::Lookup`]: the export's size, or `None` when it cannot be
    /// served.
    pub fn looked_up(&self, lookup: &Lookup, size: Option<u64>) -> Step {
        let Some(size) = size else {
            return Step::Close("the export cannot be served");
        };
        let option = lookup.option;
        if option == OPT_EXPORT_NAME {
            let zeroes = self.client_flags.unwrap_or(0) & FLAG_C_NO_ZEROES == 0;
            return Step::Transmit(encode_export_name_reply(size, EXPORT_FLAGS, zeroes));
        }
        let mut out = encode_option_reply(
            option,
            ReplyCode::Info,
            &encode_info_export(size, EXPORT_FLAGS),
        );
        if lookup.block_sizes {
            out.extend(encode_option_reply(
                option,
                ReplyCode::Info,
                &encode_info_block_size(BLOCK_SIZES),
            ));
        }
        out.extend(encode_option_reply(option, ReplyCode::Ack, &[]));
        if option == OPT_GO {
            Step::Transmit(out)
        } else {
            Step::Reply(out)
        }
    }

    fn option(&self, option: u32, data: &[u8]) -> Step {
        let reply = |code, message: &str| {
            Step::Reply(encode_option_reply(option, code, message.as_bytes()))
        };
        let tls_missing = self.security == Security::Tls && !self.tls_active;
        match option {
            OPT_ABORT => Step::ReplyAndClose(encode_option_reply(option, ReplyCode::Ack, &[])),
            OPT_STARTTLS if !data.is_empty() => {
                reply(ReplyCode::Invalid, "NBD_OPT_STARTTLS takes no data")
            }
            OPT_STARTTLS if self.security == Security::Plain => reply(
                ReplyCode::Policy,
                "no TLS: the NBD network's purpose is insecure_nbd",
            ),
            OPT_STARTTLS if self.tls_active => reply(ReplyCode::Invalid, "TLS is on already"),
            OPT_STARTTLS => Step::StartTls(encode_option_reply(option, ReplyCode::Ack, &[])),
            // No error can answer it: the protocol's only way out is to close.
            OPT_EXPORT_NAME if tls_missing => Step::Close("NBD_OPT_EXPORT_NAME before TLS"),
            _ if tls_missing => reply(
                ReplyCode::TlsRequired,
                "TLS first: the NBD network's purpose is nbd",
            ),
            OPT_EXPORT_NAME => Step::Lookup(Lookup {
                option,
                name: data.to_vec(),
                block_sizes: false,
            }),
            OPT_GO | OPT_INFO => match decode_info_request(option, data) {
                Ok(request) => Step::Lookup(Lookup {
                    option,
                    name: request.export_name,
                    block_sizes: request.requests.contains(&INFO_BLOCK_SIZE),
                }),
                Err(_) => reply(ReplyCode::Invalid, "malformed option data"),
            },
            _ => reply(ReplyCode::Unsupported, "unsupported option"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::nbd::requests::{self, Action};
    use crate::nbd::wire::{
        INFO_EXPORT_LEN, OPTION_REPLY_HEADER_LEN, encode_info_request, encode_option,
    };

    fn started(security: Security, client_flags: u32) -> Negotiation {
        let mut negotiation = Negotiation::new(security);
        let decoded = negotiation.decode(&client_flags.to_be_bytes()).unwrap();
        assert_eq!(
            decoded,
            Decoded::Done {
                value: Step::Reply(vec![]),
                consumed: 4
            }
        );
        negotiation
    }

    fn step(negotiation: &mut Negotiation, option: u32, data: &[u8]) -> Step {
        let bytes = encode_option(option, data);
        for cut in 0..bytes.len() {
            assert!(matches!(
                negotiation.decode(&bytes[..cut]).unwrap(),
                Decoded::NeedMore(n) if n > 0
            ));
        }
        match negotiation.decode(&bytes).unwrap() {
            Decoded::Done { value, consumed } => {
                assert_eq!(consumed, bytes.len());
                value
            }
            other => panic!("{other:?}"),
        }
    }

    fn reply_code(bytes: &[u8]) -> ReplyCode {
        ReplyCode::from_wire(u32::from_be_bytes(bytes[12..16].try_into().unwrap()))
    }

    const BOTH: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

    #[test]
    fn plain_go_looks_up_and_answers_with_size_flags_and_block_sizes() {
        let mut negotiation = started(Security::Plain, BOTH);
        let data = encode_info_request(b"/name", &[INFO_BLOCK_SIZE]);
        let Step::Lookup(lookup) = step(&mut negotiation, OPT_GO, &data) else {
            panic!("GO should look the export up");
        };
        assert_eq!(lookup.name, b"/name");
        assert!(lookup.block_sizes);
        assert!(!format!("{lookup:?}").contains("name\""));
        let Step::Transmit(out) = negotiation.looked_up(&lookup, Some(8 << 20)) else {
            panic!("GO enters transmission");
        };
        assert_eq!(reply_code(&out), ReplyCode::Info);
        let size = u64::from_be_bytes(out[22..30].try_into().unwrap());
        assert_eq!(size, 8 << 20);
        let second = OPTION_REPLY_HEADER_LEN + INFO_EXPORT_LEN;
        assert_eq!(reply_code(&out[second..]), ReplyCode::Info);
        assert_eq!(reply_code(&out[out.len() - 20..]), ReplyCode::Ack);
        assert_eq!(
            negotiation.looked_up(&lookup, None),
            Step::Close("the export cannot be served")
        );
    }

    #[test]
    fn info_answers_without_entering_transmission_and_export_name_falls_back() {
        let mut negotiation = started(Security::Plain, FLAG_C_FIXED_NEWSTYLE);
        let Step::Lookup(lookup) =
            step(&mut negotiation, OPT_INFO, &encode_info_request(b"/x", &[]))
        else {
            panic!()
        };
        assert!(matches!(
            negotiation.looked_up(&lookup, Some(512)),
            Step::Reply(_)
        ));
        let Step::Lookup(lookup) = step(&mut negotiation, OPT_EXPORT_NAME, b"/x") else {
            panic!()
        };
        // Without NO_ZEROES the reply carries the 124 zero bytes.
        let Step::Transmit(out) = negotiation.looked_up(&lookup, Some(512)) else {
            panic!()
        };
        assert_eq!(out.len(), 10 + 124);
    }

    #[test]
    fn tls_comes_first_when_required_and_is_refused_when_off() {
        let mut negotiation = started(Security::Tls, BOTH);
        let go = encode_info_request(b"/x", &[]);
        let Step::Reply(out) = step(&mut negotiation, OPT_GO, &go) else {
            panic!()
        };
        assert_eq!(reply_code(&out), ReplyCode::TlsRequired);
        assert_eq!(
            step(&mut negotiation, OPT_EXPORT_NAME, b"/x"),
            Step::Close("NBD_OPT_EXPORT_NAME before TLS")
        );
        let Step::Reply(out) = step(&mut negotiation, OPT_STARTTLS, b"junk") else {
            panic!()
        };
        assert_eq!(reply_code(&out), ReplyCode::Invalid);
        assert!(matches!(
            step(&mut negotiation, OPT_STARTTLS, &[]),
            Step::StartTls(_)
        ));
        negotiation.tls_started();
        let Step::Reply(out) = step(&mut negotiation, OPT_STARTTLS, &[]) else {
            panic!()
        };
        assert_eq!(reply_code(&out), ReplyCode::Invalid);
        assert!(matches!(
            step(&mut negotiation, OPT_GO, &go),
            Step::Lookup(_)
        ));

        let mut plain = started(Security::Plain, BOTH);
        let Step::Reply(out) = step(&mut plain, OPT_STARTTLS, &[]) else {
            panic!()
        };
        assert_eq!(reply_code(&out), ReplyCode::Policy);
    }

    /// Drive a whole session over `input` as the connection would: the handshake, then the
    /// requests; returns how far it got. Never panics, whatever the bytes.
    fn session(input: &[u8], security: Security) -> usize {
        let mut negotiation = Negotiation::new(security);
        let mut at = 0;
        loop {
            let step = match negotiation.decode(&input[at..]) {
                Ok(Decoded::Done { value, consumed }) => {
                    assert!(consumed > 0 && at + consumed <= input.len());
                    at += consumed;
                    value
                }
                Ok(Decoded::NeedMore(_)) | Err(_) => return at,
            };
            let step = match step {
                Step::Lookup(lookup) => negotiation.looked_up(&lookup, Some(1 << 20)),
                Step::StartTls(_) => {
                    negotiation.tls_started();
                    continue;
                }
                other => other,
            };
            match step {
                Step::Transmit(_) => break,
                Step::Close(_) | Step::ReplyAndClose(_) => return at,
                _ => {}
            }
        }
        loop {
            match requests::next(&input[at..], 1 << 20) {
                Ok(Decoded::Done { value, consumed }) => {
                    at += consumed;
                    if matches!(value, Action::Disconnect | Action::Close(_)) {
                        return at;
                    }
                }
                Ok(Decoded::NeedMore(_)) | Err(_) => return at,
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_from_a_client_end_cleanly(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            tls in proptest::prelude::any::<bool>(),
        ) {
            let security = if tls { Security::Tls } else { Security::Plain };
            proptest::prop_assert!(session(&input, security) <= input.len());
        }

        /// A valid session with random bytes spliced in somewhere.
        #[test]
        fn mutated_sessions_end_cleanly(at in 0usize..200, junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..16)) {
            let mut input = BOTH.to_be_bytes().to_vec();
            input.extend(encode_option(OPT_GO, &encode_info_request(b"/x", &[INFO_BLOCK_SIZE])));
            input.extend([0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            input.extend([0u8; 8]);
            input.extend((4096u32).to_be_bytes());
            let at = at.min(input.len());
            input.splice(at..at, junk);
            proptest::prop_assert!(session(&input, Security::Plain) <= input.len());
        }
    }

    #[test]
    fn a_whole_session_reaches_transmission() {
        let mut input = BOTH.to_be_bytes().to_vec();
        input.extend(encode_option(OPT_GO, &encode_info_request(b"/x", &[])));
        input.extend([0x25, 0x60, 0x95, 0x13, 0, 0, 0, 2]);
        input.extend([0u8; 20]);
        assert_eq!(session(&input, Security::Plain), input.len());
    }

    #[test]
    fn hostile_clients_are_bounded_and_refused() {
        for flags in [0u32, BOTH | 0x100] {
            let mut negotiation = Negotiation::new(Security::Plain);
            assert!(matches!(
                negotiation.decode(&flags.to_be_bytes()).unwrap(),
                Decoded::Done {
                    value: Step::Close(_),
                    ..
                }
            ));
        }
        let mut negotiation = started(Security::Plain, BOTH);
        let Step::Reply(out) = step(&mut negotiation, OPT_GO, b"\0\0\0\xffxx") else {
            panic!()
        };
        assert_eq!(reply_code(&out), ReplyCode::Invalid);
        let Step::Reply(out) = step(&mut negotiation, 3, &[]) else {
            panic!()
        };
        assert_eq!(reply_code(&out), ReplyCode::Unsupported);
        assert!(matches!(
            step(&mut negotiation, OPT_ABORT, &[]),
            Step::ReplyAndClose(_)
        ));
        // An option longer than any allowed is refused before it is buffered.
        let mut huge = encode_option(OPT_GO, &[]);
        huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(negotiation.decode(&huge).is_err());
        let mut chatty = started(Security::Plain, BOTH);
        for _ in 0..MAX_OPTIONS {
            assert!(matches!(step(&mut chatty, 3, &[]), Step::Reply(_)));
        }
        assert_eq!(step(&mut chatty, 3, &[]), Step::Close("too many options"));
    }
}
