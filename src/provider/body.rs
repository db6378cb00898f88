//! Response bodies read with a cap, chunk by chunk, for every server the daemon asks: a
//! provider or a store that sends more than an answer can be must not fill memory first.

use zeroize::Zeroizing;

use super::{MAX_BODY_BYTES, ProviderError};

/// Why a body could not be read whole.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Announced or sent more than the cap; nothing more was read.
    TooLarge,
    Transport(reqwest::Error),
}

/// Read at most `max` bytes of a response body. A `Content-Length` above it is refused before
/// any byte is read, and a body without one (chunked, or ended by closing) is read chunk by
/// chunk and dropped the moment it passes `max`. The buffer is zeroed on drop: it may hold a
/// token.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = Zeroizing::new(Vec::new());
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if buf.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Read at most [`MAX_BODY_BYTES`] of a provider's answer.
pub(crate) async fn read_body(
    operation: &'static str,
    resp: reqwest::Response,
) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
    read_capped(resp, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ProviderError::Malformed {
                operation,
                what: format!("body larger than {MAX_BODY_BYTES} bytes"),
            },
            BodyError::Transport(source) => ProviderError::Transport { operation, source },
        })
}
