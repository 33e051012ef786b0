//! Fixed-size frames: the plaintext inside every slot.
//!
//! A slot of L bytes holds `nonce (24) || AEAD(frame) || tag (16)`, so a frame is exactly
//! `L - 40` bytes whatever it carries:
//!
//! ```text
//! version (1) = 1 | flags (1) | ack (u32 LE) | seq (u32 LE) | len (u16 LE) | data (len) | zeros
//!   [| key block (44), the last 44 bytes, when flag bit 3 is set]
//! flags: bit 0 = carries a fragment, bit 1 = last fragment of a message, bit 2 = padding frame,
//!        bit 3 = carries a key block
//! ```
//!
//! The key block ([`crate::ratchet::KeyBlock`]) is the session layer's announcement of an
//! ephemeral key and switch round; it rides in the frame, outside the sequenced stream, so it
//! never waits behind queued data. A frame with a key block has `data capacity - 44` bytes
//! left for a fragment.
//!
//! `ack` is cumulative: the number of the peer's fragments received in order (the next sequence
//! number expected). A frame without a fragment still carries the ack. Decoding is strict:
//! unknown flags, a length past the capacity and non-zero padding are rejected.

use crate::ratchet::{KEY_BLOCK_LEN, KeyBlock};
use crate::session::SLOT_OVERHEAD;

/// Bytes of the frame header.
pub const HEADER_LEN: usize = 12;
const VERSION: u8 = 1;
const FLAG_FRAGMENT: u8 = 1;
const FLAG_LAST: u8 = 2;
const FLAG_PADDING: u8 = 4;
const FLAG_KEY: u8 = 8;

/// One fragment of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Per-direction sequence number.
    pub seq: u32,
    /// Last fragment of its message.
    pub last: bool,
    /// The bytes (at most the frame's data capacity).
    pub data: Vec<u8>,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A frame to a contact: the cumulative ack, maybe one fragment, maybe a key block.
    Data {
        /// Next fragment sequence number expected from the peer.
        ack: u32,
        /// The fragment carried, if any.
        fragment: Option<Fragment>,
        /// The sender's key block, if it has an unconfirmed one.
        key: Option<KeyBlock>,
    },
    /// Padding written to the self-pair.
    Padding,
}

/// Why a frame did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The slot length leaves no room for a frame.
    #[error("slot length {0} is too small for a frame (needs at least {min})", min = SLOT_OVERHEAD + HEADER_LEN + 1)]
    SlotTooSmall(usize),
    /// Wrong total size.
    #[error("frame of {got} bytes, expected {expected}")]
    Size {
        /// Expected size.
        expected: usize,
        /// Actual size.
        got: usize,
    },
    /// Unknown version.
    #[error("frame version {0} is not supported")]
    Version(u8),
    /// Unknown or inconsistent flags.
    #[error("invalid frame flags {0:#04x}")]
    Flags(u8),
    /// Data length past the capacity.
    #[error("fragment length {0} exceeds the frame capacity")]
    Length(usize),
    /// Padding bytes not zero.
    #[error("non-zero bytes after the fragment")]
    Trailing,
    /// A key block that does not decode.
    #[error("malformed key block")]
    KeyBlock,
    /// A fragment larger than the capacity was handed to the encoder.
    #[error("fragment of {0} bytes does not fit a frame")]
    TooLarge(usize),
}

/// Frame size for a slot length.
pub fn frame_len(slot_len: usize) -> Result<usize, FrameError> {
    if slot_len < SLOT_OVERHEAD + HEADER_LEN + 1 || slot_len - SLOT_OVERHEAD > usize::from(u16::MAX)
    {
        return Err(FrameError::SlotTooSmall(slot_len));
    }
    Ok(slot_len - SLOT_OVERHEAD)
}

/// Fragment data bytes per frame for a slot length.
pub fn data_capacity(slot_len: usize) -> Result<usize, FrameError> {
    Ok(frame_len(slot_len)? - HEADER_LEN)
}

impl Frame {
    /// Encodes into exactly `frame_len` bytes.
    pub fn encode(&self, frame_len: usize) -> Result<Vec<u8>, FrameError> {
        let cap = frame_len
            .checked_sub(HEADER_LEN)
            .ok_or(FrameError::SlotTooSmall(frame_len))?;
        let mut out = vec![0u8; frame_len];
        out[0] = VERSION;
        match self {
            Frame::Padding => out[1] = FLAG_PADDING,
            Frame::Data { ack, fragment, key } => {
                out[2..6].copy_from_slice(&ack.to_le_bytes());
                let cap = match key {
                    Some(k) => {
                        let room = cap
                            .checked_sub(KEY_BLOCK_LEN)
                            .ok_or(FrameError::TooLarge(KEY_BLOCK_LEN))?;
                        out[1] |= FLAG_KEY;
                        out[frame_len - KEY_BLOCK_LEN..].copy_from_slice(&k.encode());
                        room
                    }
                    None => cap,
                };
                if let Some(f) = fragment {
                    if f.data.len() > cap {
                        return Err(FrameError::TooLarge(f.data.len()));
                    }
                    out[1] |= FLAG_FRAGMENT | if f.last { FLAG_LAST } else { 0 };
                    out[6..10].copy_from_slice(&f.seq.to_le_bytes());
                    let len = u16::try_from(f.data.len())
                        .map_err(|_| FrameError::TooLarge(f.data.len()))?;
                    out[10..12].copy_from_slice(&len.to_le_bytes());
                    out[HEADER_LEN..HEADER_LEN + f.data.len()].copy_from_slice(&f.data);
                }
            }
        }
        Ok(out)
    }

    /// Decodes a frame of exactly `frame_len` bytes.
    pub fn decode(bytes: &[u8], frame_len: usize) -> Result<Self, FrameError> {
        if bytes.len() != frame_len || frame_len < HEADER_LEN {
            return Err(FrameError::Size {
                expected: frame_len,
                got: bytes.len(),
            });
        }
        if bytes[0] != VERSION {
            return Err(FrameError::Version(bytes[0]));
        }
        let flags = bytes[1];
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let ack = u32_at(2);
        let seq = u32_at(6);
        let len = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
        let (key, end) = if flags & FLAG_KEY != 0 && flags & FLAG_PADDING == 0 {
            let start = frame_len
                .checked_sub(KEY_BLOCK_LEN)
                .filter(|s| *s >= HEADER_LEN)
                .ok_or(FrameError::Flags(flags))?;
            let k = KeyBlock::decode(&bytes[start..]).ok_or(FrameError::KeyBlock)?;
            (Some(k), start)
        } else {
            (None, frame_len)
        };
        let frame = match flags & !FLAG_KEY {
            FLAG_PADDING if flags == FLAG_PADDING => {
                if bytes[2..].iter().any(|b| *b != 0) {
                    return Err(FrameError::Trailing);
                }
                return Ok(Frame::Padding);
            }
            0 => {
                if seq != 0 || len != 0 {
                    return Err(FrameError::Flags(flags));
                }
                Frame::Data {
                    ack,
                    fragment: None,
                    key,
                }
            }
            f if f == FLAG_FRAGMENT || f == FLAG_FRAGMENT | FLAG_LAST => {
                if len > end - HEADER_LEN {
                    return Err(FrameError::Length(len));
                }
                Frame::Data {
                    ack,
                    fragment: Some(Fragment {
                        seq,
                        last: f & FLAG_LAST != 0,
                        data: bytes[HEADER_LEN..HEADER_LEN + len].to_vec(),
                    }),
                    key,
                }
            }
            _ => return Err(FrameError::Flags(flags)),
        };
        let used = match &frame {
            Frame::Data {
                fragment: Some(f), ..
            } => HEADER_LEN + f.data.len(),
            _ => HEADER_LEN,
        };
        if bytes[used..end].iter().any(|b| *b != 0) {
            return Err(FrameError::Trailing);
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_fixed_size() -> Result<(), FrameError> {
        let n = frame_len(256)?;
        assert_eq!(n, 216);
        let cap = data_capacity(256)?;
        let frames = [
            Frame::Padding,
            Frame::Data {
                ack: 0,
                fragment: None,
                key: None,
            },
            Frame::Data {
                ack: 17,
                fragment: Some(Fragment {
                    seq: 3,
                    last: false,
                    data: vec![0xab; cap],
                }),
                key: None,
            },
            Frame::Data {
                ack: u32::MAX,
                fragment: Some(Fragment {
                    seq: 9,
                    last: true,
                    data: b"hi".to_vec(),
                }),
                key: None,
            },
            Frame::Data {
                ack: 1,
                fragment: Some(Fragment {
                    seq: 0,
                    last: true,
                    data: Vec::new(),
                }),
                key: None,
            },
            Frame::Data {
                ack: 4,
                fragment: None,
                key: Some(KeyBlock {
                    epoch: 1,
                    public: [9; 32],
                    switch: None,
                }),
            },
            Frame::Data {
                ack: 5,
                fragment: Some(Fragment {
                    seq: 6,
                    last: false,
                    data: vec![0xcd; cap - KEY_BLOCK_LEN],
                }),
                key: Some(KeyBlock {
                    epoch: 7,
                    public: [8; 32],
                    switch: Some(12_345),
                }),
            },
        ];
        for f in frames {
            let bytes = f.encode(n)?;
            assert_eq!(bytes.len(), n);
            assert_eq!(Frame::decode(&bytes, n)?, f);
        }
        Ok(())
    }

    #[test]
    fn malformed_frames_are_rejected() -> Result<(), FrameError> {
        let n = frame_len(128)?;
        let good = Frame::Data {
            ack: 1,
            fragment: Some(Fragment {
                seq: 2,
                last: true,
                data: b"abc".to_vec(),
            }),
            key: None,
        }
        .encode(n)?;
        assert!(matches!(
            Frame::decode(&good[1..], n),
            Err(FrameError::Size { .. })
        ));
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(Frame::decode(&v, n), Err(FrameError::Version(2)));
        let mut v = good.clone();
        v[1] = 0x80;
        assert_eq!(Frame::decode(&v, n), Err(FrameError::Flags(0x80)));
        let mut v = good.clone();
        v[10..12].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(Frame::decode(&v, n), Err(FrameError::Length(_))));
        let mut v = good.clone();
        v[n - 1] = 1;
        assert_eq!(Frame::decode(&v, n), Err(FrameError::Trailing));
        let too_big = Frame::Data {
            ack: 0,
            fragment: Some(Fragment {
                seq: 0,
                last: true,
                data: vec![1; n],
            }),
            key: None,
        };
        assert!(matches!(too_big.encode(n), Err(FrameError::TooLarge(_))));
        // A key block leaves less room for the fragment.
        let cap = data_capacity(128)?;
        let block = KeyBlock {
            epoch: 1,
            public: [1; 32],
            switch: Some(3),
        };
        let crowded = Frame::Data {
            ack: 0,
            fragment: Some(Fragment {
                seq: 0,
                last: true,
                data: vec![1; cap - KEY_BLOCK_LEN + 1],
            }),
            key: Some(block),
        };
        assert!(matches!(crowded.encode(n), Err(FrameError::TooLarge(_))));
        let with_key = Frame::Data {
            ack: 0,
            fragment: None,
            key: Some(block),
        }
        .encode(n)?;
        let mut v = with_key.clone();
        v[n - KEY_BLOCK_LEN..n - KEY_BLOCK_LEN + 4].copy_from_slice(&[0; 4]);
        assert_eq!(Frame::decode(&v, n), Err(FrameError::KeyBlock), "epoch 0");
        let mut v = with_key.clone();
        v[n - KEY_BLOCK_LEN - 1] = 1;
        assert_eq!(Frame::decode(&v, n), Err(FrameError::Trailing));
        let mut v = with_key;
        v[1] = FLAG_PADDING | FLAG_KEY;
        assert!(
            Frame::decode(&v, n).is_err(),
            "padding carries no key block"
        );
        assert!(matches!(frame_len(40), Err(FrameError::SlotTooSmall(40))));
        Ok(())
    }
}
