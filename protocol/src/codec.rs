//! The one bincode configuration of the project.
//!
//! Every byte string that crosses a network boundary is produced by [`encode`] and read by
//! [`decode`]: fixed-width little-endian integers, a hard size limit ([`LIMIT`]) that bounds every
//! container allocation before it happens, and rejection of trailing bytes. No other module in
//! the workspace touches bincode.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use bincode::de::Decoder;
use bincode::de::read::Reader;
use bincode::error::DecodeError;

/// Upper bound, in bytes, on what a single decode may claim for containers (vectors, strings).
///
/// Large share arrays exchanged between servers are exempt: they are read in chunks, so their
/// allocation grows only with bytes that actually arrived (see [`decode_chunked_bytes`]).
pub const LIMIT: usize = 16 << 20;

type Config = Configuration<LittleEndian, Fixint, Limit<LIMIT>>;

fn config() -> Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<LIMIT>()
}

/// Why a byte string could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not a valid encoding of the expected type (truncated, bad tag, too long, ...).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A valid encoding was followed by extra bytes.
    #[error("{extra} trailing bytes after a valid message")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The value could not be encoded (only possible if it exceeds [`LIMIT`]).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `value` with the project's bincode configuration.
///
/// Encoding an in-memory value only fails if it is larger than the limit; that is reported as a
/// [`CodecError::Encode`] by [`try_encode`]; this infallible variant is for values whose size is
/// bounded by construction and returns an empty vector otherwise (which no decoder accepts).
pub fn encode<T: bincode::Encode>(value: &T) -> Vec<u8> {
    try_encode(value).unwrap_or_default()
}

/// Encodes `value`, reporting an error instead of returning an empty vector.
pub fn try_encode<T: bincode::Encode>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a `T` from exactly `bytes`: a prefix that decodes but leaves bytes over is rejected.
pub fn decode<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Reads a `u64` length followed by that many bytes, refusing lengths above `max` and growing the
/// buffer only as bytes actually arrive (chunks of 64 KiB), so a lying length prefix cannot make
/// the decoder allocate more than the input holds.
pub(crate) fn decode_chunked_bytes<D: Decoder>(
    decoder: &mut D,
    max: usize,
) -> Result<Vec<u8>, DecodeError> {
    let len64: u64 = bincode::Decode::decode(decoder)?;
    let len = usize::try_from(len64).map_err(|_| DecodeError::OutsideUsizeRange(len64))?;
    if len > max {
        return Err(DecodeError::Other("byte string longer than its bound"));
    }
    // From a slice the bytes are all there to check: one exact allocation and one copy.
    if let Some(bytes) = decoder.reader().peek_read(len) {
        let out = bytes.to_vec();
        decoder.reader().consume(len);
        return Ok(out);
    }
    const CHUNK: usize = 64 << 10;
    let mut out = Vec::with_capacity(len.min(CHUNK));
    let mut chunk = [0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        decoder.reader().read(&mut chunk[..n])?;
        out.extend_from_slice(&chunk[..n]);
        left -= n;
    }
    Ok(out)
}
