//! The peer channel's messages: a ping carrying a random nonce, answered by a pong that
//! echoes it, both authenticated with HMAC-SHA256 under the cluster's peer key.
//!
//! A pong is accepted only as the answer to a ping this agent sent recently (the nonce), so
//! a recorded pong replayed later, or one delayed past the ping's validity, says nothing. A
//! replayed ping costs a pong and teaches the receiver a peer it must then hear from: it can
//! only make holding harder, never easier.

use std::net::Ipv4Addr;

use ring::hmac;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Format version: a receiver drops messages of another version.
pub const WIRE_VERSION: u8 = 1;
/// Length of the HMAC-SHA256 tag appended to every message.
pub const TAG_LEN: usize = 32;
/// Largest datagram accepted (a pong lists the sender's egress IPs).
pub const MAX_DATAGRAM: usize = 8192;
/// The shortest key accepted.
pub const MIN_KEY_LEN: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("datagram of {len} bytes is shorter than its authentication tag")]
    Short { len: usize },
    #[error("authentication failed (wrong key, or tampered)")]
    BadTag,
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("message version {got}, expected {WIRE_VERSION}")]
    Version { got: u8 },
    #[error("peer key of {len} bytes is shorter than {MIN_KEY_LEN}")]
    WeakKey { len: usize },
}

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Ping,
    Pong,
}

/// One message between agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub v: u8,
    pub kind: Kind,
    /// The sending node.
    pub from: String,
    /// The node it is meant for (a message for another node is dropped).
    pub to: String,
    /// A ping's random nonce; a pong echoes the ping's.
    pub nonce: u64,
    /// The sender has had no fresh Lease renewal for at least its cut-off deadline.
    pub cut_off: bool,
    /// How long ago the sender sent its last fresh renewal, milliseconds (`u64::MAX`: none).
    pub fresh_age_ms: u64,
    /// Egress IPs the sender's kernel holds.
    pub held: Vec<Ipv4Addr>,
}

/// The HMAC key shared by the agents.
#[derive(Clone)]
pub struct PeerKey(hmac::Key);

impl PeerKey {
    pub fn new(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(WireError::WeakKey { len: bytes.len() });
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// The message as a datagram: JSON body, then its tag.
    pub fn seal(&self, m: &Message) -> Vec<u8> {
        let mut out = serde_json::to_vec(m).expect("a message always serialises");
        let tag = hmac::sign(&self.0, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Check the tag, then decode.
    pub fn open(&self, datagram: &[u8]) -> Result<Message, WireError> {
        if datagram.len() < TAG_LEN {
            return Err(WireError::Short {
                len: datagram.len(),
            });
        }
        let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        hmac::verify(&self.0, body, tag).map_err(|_| WireError::BadTag)?;
        let m: Message =
            serde_json::from_slice(body).map_err(|e| WireError::Decode(e.to_string()))?;
        if m.v != WIRE_VERSION {
            return Err(WireError::Version { got: m.v });
        }
        Ok(m)
    }
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PeerKey {
        PeerKey::new(&[b; 32]).unwrap()
    }

    fn ping() -> Message {
        Message {
            v: WIRE_VERSION,
            kind: Kind::Ping,
            from: "node-2".into(),
            to: "node-3".into(),
            nonce: 42,
            cut_off: true,
            fresh_age_ms: 900,
            held: vec![Ipv4Addr::new(198, 18, 0, 200)],
        }
    }

    #[test]
    fn a_sealed_message_opens_with_the_same_key_only() {
        let d = key(1).seal(&ping());
        assert_eq!(key(1).open(&d), Ok(ping()));
        assert_eq!(key(2).open(&d), Err(WireError::BadTag));
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let d = key(1).seal(&ping());
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x01;
            assert!(key(1).open(&bad).is_err(), "byte {i} changed unnoticed");
        }
        assert!(matches!(
            key(1).open(&d[..10]),
            Err(WireError::Short { .. })
        ));
    }

    #[test]
    fn short_keys_and_other_versions_are_refused() {
        assert_eq!(
            PeerKey::new(&[0; 16]).unwrap_err(),
            WireError::WeakKey { len: 16 }
        );
        let mut m = ping();
        m.v = 9;
        assert_eq!(
            key(1).open(&key(1).seal(&m)),
            Err(WireError::Version { got: 9 })
        );
    }
}
