//! Canonical byte encoding of keys.
//!
//! ```text
//! read key : version=1 | kind=1 | n:u8 |              salt:16 | root:16 | levels | cw_out:16
//! write key: version=2 | kind=2 | n:u8 | slot_len:u32 | salt:16 | root:16 | levels | cw_out:slot_len | cs:64
//! levels   : depth x (cw:16 | t_right:u8)      depth = max(n - 7, 0) for read keys, n for write keys
//! ```
//!
//! Integers and blocks are little-endian. The root's low bit must be clear and every `t_right`
//! byte must be 0 or 1, so each key has exactly one encoding; decoding checks everything,
//! including the total length, before it allocates anything.

use crate::DecodeError;
use crate::tree::Tree;

/// Format version of read keys.
pub const READ_VERSION: u8 = 1;
/// Format version of write keys: 2 since the audit's leaf proofs became 512 bits, bound to
/// their leaf through per-leaf keys (version 1's audit could be forged).
pub const WRITE_VERSION: u8 = 2;
pub(crate) const KIND_READ: u8 = 1;
pub(crate) const KIND_WRITE: u8 = 2;
pub(crate) const LEVEL_LEN: usize = 17;

pub(crate) fn put_tree(out: &mut Vec<u8>, t: &Tree) {
    out.extend_from_slice(&t.salt.to_le_bytes());
    out.extend_from_slice(&t.root.to_le_bytes());
    for (cw, tr) in t.cw.iter().zip(&t.t_right) {
        out.extend_from_slice(&cw.to_le_bytes());
        out.push(*tr);
    }
}

/// A cursor over input whose total length was already checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn block(&mut self) -> Result<u128, DecodeError> {
        let b = self.bytes(16)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(u128::from_le_bytes(a))
    }

    pub(crate) fn header(&mut self, kind: u8, domain_bits: u32) -> Result<(), DecodeError> {
        let version = self.u8()?;
        let k = self.u8()?;
        if k != kind {
            return Err(DecodeError::Kind(k));
        }
        let want = if kind == KIND_WRITE {
            WRITE_VERSION
        } else {
            READ_VERSION
        };
        if version != want {
            return Err(DecodeError::Version(version));
        }
        let n = self.u8()?;
        if u32::from(n) != domain_bits {
            return Err(DecodeError::Domain {
                got: n.into(),
                want: domain_bits,
            });
        }
        Ok(())
    }

    pub(crate) fn tree(&mut self, depth: u32) -> Result<Tree, DecodeError> {
        let salt = self.block()?;
        let root = self.block()?;
        if root & 1 != 0 {
            return Err(DecodeError::NonCanonical("root seed has its low bit set"));
        }
        let mut cw = Vec::with_capacity(depth as usize);
        let mut t_right = Vec::with_capacity(depth as usize);
        for _ in 0..depth {
            cw.push(self.block()?);
            let t = self.u8()?;
            if t > 1 {
                return Err(DecodeError::NonCanonical(
                    "control correction is not 0 or 1",
                ));
            }
            t_right.push(t);
        }
        Ok(Tree {
            salt,
            root,
            cw,
            t_right,
        })
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}
