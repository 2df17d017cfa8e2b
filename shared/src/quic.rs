//! Length-prefixed frames on QUIC streams: the one reader the origin–edge link and client QUIC
//! sessions share (behind the `quic` feature; the rest of this crate does no I/O).
//!
//! A frame is a 4-byte big-endian length and that many bytes ([`crate::link::encode_frame`]);
//! the length is checked against the caller's limit before anything is allocated.

use crate::{
    codec::DecodeError,
    link::{frame_len, FRAME_PREFIX_BYTES},
};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The length prefix announced more than allowed; nothing was allocated.
    #[error("{0}")]
    TooLarge(DecodeError),
    /// The stream ended inside a frame (after `got` of `expected` bytes of the prefix or body).
    #[error("the stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes that arrived.
        got: usize,
        /// Bytes the prefix or body needed.
        expected: usize,
    },
    /// The stream or its connection failed.
    #[error("{0}")]
    Read(#[from] quinn::ReadError),
}

async fn fill(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), FrameReadError> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(got)) => Err(FrameReadError::Truncated { got, expected: buf.len() }),
        Err(quinn::ReadExactError::ReadError(e)) => Err(FrameReadError::Read(e)),
    }
}

/// Reads one frame's body of at most `max` bytes; `Ok(None)` when the stream ended cleanly
/// between frames.
pub async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    match fill(recv, &mut prefix).await {
        Ok(()) => {}
        Err(FrameReadError::Truncated { got: 0, .. }) => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(prefix, max).map_err(FrameReadError::TooLarge)?;
    let mut body = vec![0u8; len];
    fill(recv, &mut body).await?;
    Ok(Some(body))
}
