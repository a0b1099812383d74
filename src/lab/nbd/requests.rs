//! The transmission phase, server side: what to do with each request of a read-only export.
//! Reads within the export, aligned to 512 bytes and at most 32 MiB long, are served;
//! other reads and commands that would change the export get an error reply and the
//! connection goes on; `NBD_CMD_DISC` ends it; a write, whose payload would follow, closes it
//! (a client may not write to a read-only export, and skipping up to 4 GiB of payload is no
//! service worth giving).

use crate::nbd::NbdError;
use crate::nbd::server::{decode_request, encode_simple_reply};
use crate::nbd::wire::{CMD_DISC, CMD_READ, Decoded, SIMPLE_REPLY_LEN, ServerError};

use super::negotiation::BLOCK_SIZES;

const CMD_WRITE: u16 = 1;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

/// What the driver does with one request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Send a successful reply header for `handle`, then `len` bytes of the export from
    /// `offset`.
    Read { handle: u64, offset: u64, len: u32 },
    /// Send this error reply and go on.
    Refuse([u8; SIMPLE_REPLY_LEN]),
    /// The client is leaving: close the connection.
    Disconnect,
    /// Close the connection, for this reason (for the logs).
    Close(&'static str),
}

/// Decode the next request from `input` for an export of `size` bytes.
pub(super) fn next(input: &[u8], size: u64) -> Result<Decoded<Action>, NbdError> {
    let (request, consumed) = match decode_request(input)? {
        Decoded::NeedMore(n) => return Ok(Decoded::NeedMore(n)),
        Decoded::Done { value, consumed } => (value, consumed),
    };
    let refuse = |error| Action::Refuse(encode_simple_reply(request.handle, Some(error)));
    let action = match request.command {
        CMD_READ => {
            let aligned = |n: u64| n.is_multiple_of(u64::from(BLOCK_SIZES.minimum));
            let len = u64::from(request.len);
            let within = request
                .offset
                .checked_add(len)
                .is_some_and(|end| end <= size);
            let allowed = len > 0 && len <= u64::from(BLOCK_SIZES.maximum);
            if allowed && within && aligned(request.offset) && aligned(len) {
                Action::Read {
                    handle: request.handle,
                    offset: request.offset,
                    len: request.len,
                }
            } else {
                refuse(ServerError::EINVAL)
            }
        }
        CMD_DISC => Action::Disconnect,
        CMD_WRITE => Action::Close("a write to a read-only export"),
        CMD_TRIM | CMD_WRITE_ZEROES => refuse(ServerError::EPERM),
        _ => refuse(ServerError::EINVAL),
    };
    Ok(Decoded::Done {
        value: action,
        consumed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::wire::REQUEST_MAGIC;

    fn request(command: u16, offset: u64, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(REQUEST_MAGIC.to_be_bytes());
        out.extend(0u16.to_be_bytes());
        out.extend(command.to_be_bytes());
        out.extend(7u64.to_be_bytes());
        out.extend(offset.to_be_bytes());
        out.extend(len.to_be_bytes());
        out
    }

    fn action(command: u16, offset: u64, len: u32) -> Action {
        match next(&request(command, offset, len), 1 << 20).unwrap() {
            Decoded::Done { value, consumed } => {
                assert_eq!(consumed, 28);
                value
            }
            other => panic!("{other:?}"),
        }
    }

    fn error_of(action: Action) -> u32 {
        let Action::Refuse(reply) = action else {
            panic!("{action:?}")
        };
        u32::from_be_bytes(reply[4..8].try_into().unwrap())
    }

    #[test]
    fn reads_inside_the_export_are_served_and_others_refused() {
        assert_eq!(
            action(CMD_READ, 512, 4096),
            Action::Read {
                handle: 7,
                offset: 512,
                len: 4096
            }
        );
        assert_eq!(
            action(CMD_READ, 0, 1 << 20),
            Action::Read {
                handle: 7,
                offset: 0,
                len: 1 << 20
            }
        );
        for (offset, len) in [
            (0, 0),
            (1, 512),
            (0, 100),
            ((1 << 20) - 512, 1024),
            (u64::MAX - 511, 512),
            (0, u32::MAX),
        ] {
            assert_eq!(
                error_of(action(CMD_READ, offset, len)),
                22,
                "{offset} {len}"
            );
        }
        assert_eq!(error_of(action(CMD_TRIM, 0, 512)), 1);
        assert_eq!(error_of(action(9, 0, 512)), 22);
        assert_eq!(action(CMD_DISC, 0, 0), Action::Disconnect);
        assert!(matches!(action(CMD_WRITE, 0, 512), Action::Close(_)));
    }

    #[test]
    fn partial_and_corrupt_requests() {
        let bytes = request(CMD_READ, 0, 512);
        assert_eq!(next(&bytes[..10], 1 << 20).unwrap(), Decoded::NeedMore(18));
        let mut bad = bytes.clone();
        bad[0] ^= 0xff;
        assert!(next(&bad, 1 << 20).is_err());
    }
}
