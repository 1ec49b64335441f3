//! The frame of every payload: one byte of [`PROTOCOL_VERSION`], then the postcard encoding
//! of the message. Each message type names its kind and its size limit through
//! [`WireMessage`]; [`decode`] checks the limit before looking at the bytes, then the version,
//! then decodes, and rejects trailing bytes. Nothing here panics on any input.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{MessageKind, WireError, PROTOCOL_VERSION};

/// A message that travels on the wire.
pub trait WireMessage: Serialize + DeserializeOwned {
    const KIND: MessageKind;
    /// Largest payload accepted, version byte included. For messages built only from
    /// fixed-size fields and `heapless` strings this is the true maximum (a test per message
    /// checks that the largest value fits); for the variable ones (profile requests,
    /// assignments) it is a cap that keeps a broker or agent from being flooded.
    const MAX_SIZE: usize;
}

/// Encodes `msg` as version byte + postcard.
pub fn encode<M: WireMessage>(msg: &M) -> Result<Vec<u8>, WireError> {
    let mut out = vec![PROTOCOL_VERSION];
    let body = postcard::to_allocvec(msg).map_err(|source| WireError::Encode {
        kind: M::KIND,
        source,
    })?;
    out.extend_from_slice(&body);
    if out.len() > M::MAX_SIZE {
        return Err(WireError::TooLarge {
            kind: M::KIND,
            len: out.len(),
            max: M::MAX_SIZE,
        });
    }
    Ok(out)
}

/// Decodes a payload: size limit, version byte, postcard body, no trailing bytes.
pub fn decode<M: WireMessage>(bytes: &[u8]) -> Result<M, WireError> {
    if bytes.len() > M::MAX_SIZE {
        return Err(WireError::TooLarge {
            kind: M::KIND,
            len: bytes.len(),
            max: M::MAX_SIZE,
        });
    }
    let (&version, body) = bytes
        .split_first()
        .ok_or(WireError::Empty { kind: M::KIND })?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version {
            kind: M::KIND,
            found: version,
            expected: PROTOCOL_VERSION,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<M>(body).map_err(|source| WireError::Decode {
        kind: M::KIND,
        source,
    })?;
    if !rest.is_empty() {
        return Err(WireError::Trailing {
            kind: M::KIND,
            extra: rest.len(),
        });
    }
    Ok(msg)
}

/// Test helpers shared by the message files: round trip, truncation, bit flips.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Encodes, checks the frame, decodes and compares; then checks that every strict prefix
    /// is rejected without a panic. Returns the encoded bytes.
    pub fn round_trip<M: WireMessage + PartialEq + std::fmt::Debug>(msg: &M) -> Vec<u8> {
        let bytes = encode(msg).expect("encodes");
        assert_eq!(bytes[0], PROTOCOL_VERSION);
        assert!(bytes.len() <= M::MAX_SIZE);
        let back: M = decode(&bytes).expect("decodes");
        assert_eq!(&back, msg);
        for cut in 0..bytes.len() {
            assert!(
                decode::<M>(&bytes[..cut]).is_err(),
                "a {cut}-byte prefix of a {}-byte {} decoded",
                bytes.len(),
                M::KIND
            );
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::life::Death;

    #[test]
    fn a_wrong_version_byte_is_rejected_by_name() {
        let mut bytes = encode(&Death { bd_seq: 7 }).unwrap();
        bytes[0] = PROTOCOL_VERSION + 1;
        match decode::<Death>(&bytes) {
            Err(WireError::Version {
                found, expected, ..
            }) => {
                assert_eq!(found, PROTOCOL_VERSION + 1);
                assert_eq!(expected, PROTOCOL_VERSION);
            }
            other => panic!("expected a version error, got {other:?}"),
        }
    }

    #[test]
    fn an_oversized_payload_is_rejected_before_decoding() {
        let bytes = vec![PROTOCOL_VERSION; Death::MAX_SIZE + 1];
        assert!(matches!(
            decode::<Death>(&bytes),
            Err(WireError::TooLarge { len, max, .. }) if len == Death::MAX_SIZE + 1 && max == Death::MAX_SIZE
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&Death { bd_seq: 7 }).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Death>(&bytes),
            Err(WireError::Trailing { extra: 1, .. })
        ));
    }

    #[test]
    fn an_empty_payload_is_rejected() {
        assert!(matches!(decode::<Death>(&[]), Err(WireError::Empty { .. })));
    }
}
