//! Reading request bodies within limits: the compressed size is capped while reading, the
//! decompressed size while inflating, so neither a huge body nor a gzip bomb is ever held whole.
//!
//! Decoding is CPU work on input of up to 64 MiB: [`off_worker`] runs the big cases (gunzip,
//! and the sources' protobuf walk or JSON parse) on the blocking pool, so one big export cannot
//! stall the other connections of its async worker; small bodies stay inline, where they are
//! cheaper than the hop.

use std::io::Read;

use tokio::sync::Semaphore;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

/// Decoding work up to this many bytes runs inline: less than the hop to the blocking pool
/// costs (an export of a few hundred spans is well under it).
pub const INLINE_MAX: usize = 64 << 10;
/// Deflate expands at most 1032:1, which bounds a gzip body's inflating work by its size.
const DEFLATE_MAX_RATIO: usize = 1032;
/// Big bodies decoding at once at most. Full-policy: a request waits for a slot, asynchronously
/// (its worker serves other connections meanwhile), so big exports cannot take every core or
/// blocking thread; the listeners' bounded connections bound the waiters.
const DECODE_SLOTS: usize = 4;
static SLOTS: Semaphore = Semaphore::const_new(DECODE_SLOTS);

/// Run decoding worth `work` bytes where it cannot stall other connections: inline when small,
/// else on the blocking pool, [`DECODE_SLOTS`] at once.
pub async fn off_worker<T: Send + 'static>(
    work: usize,
    decode: impl FnOnce() -> T + Send + 'static,
) -> T {
    if work <= INLINE_MAX {
        return decode();
    }
    let _slot = SLOTS
        .acquire()
        .await
        .expect("the decode slots are never closed");
    match tokio::task::spawn_blocking(decode).await {
        Ok(decoded) => decoded,
        // A decoder panic stays the connection's, as when it ran inline.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("decompressed body larger than {0} bytes")]
    DecompressedTooLarge(usize),
    #[error("unsupported Content-Encoding `{0}` (use gzip or identity)")]
    UnsupportedEncoding(String),
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("reading the request body failed: {0}")]
    Read(String),
    #[error("request body not received within {0:?}")]
    Timeout(std::time::Duration),
}

impl BodyError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) | BodyError::DecompressedTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::BadGzip(_) | BodyError::Read(_) => StatusCode::BAD_REQUEST,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "body_too_large",
            BodyError::DecompressedTooLarge(_) => "decompressed_too_large",
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
            BodyError::BadGzip(_) => "bad_gzip",
            BodyError::Read(_) => "read_error",
            BodyError::Timeout(_) => "body_timeout",
        }
    }
}

/// Read and, if needed, decompress a request body.
pub async fn read_body(
    request: Request<Incoming>,
    max_body: usize,
    max_decompressed: usize,
) -> Result<Bytes, BodyError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(BodyError::TooLarge(max_body));
    }
    let encoding = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let body = Limited::new(request.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                BodyError::TooLarge(max_body)
            } else {
                BodyError::Read(e.to_string())
            }
        })?
        .to_bytes();
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(body),
        Some("gzip") | Some("x-gzip") => {
            let work = body.len().saturating_mul(DEFLATE_MAX_RATIO);
            off_worker(work, move || gunzip(&body, max_decompressed)).await
        }
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_owned())),
    }
}

/// Inflate at most `max` bytes; more is an error, found without inflating the rest.
pub fn gunzip(data: &[u8], max: usize) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::BadGzip(e.to_string()))?;
    if out.len() > max {
        return Err(BodyError::DecompressedTooLarge(max));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 50 << 20]);
        assert!(bomb.len() < 100 << 10, "a real bomb: small in, large out");
        let err = gunzip(&bomb, 1 << 20).unwrap_err();
        assert!(matches!(err, BodyError::DecompressedTooLarge(_)));
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn gzip_round_trips_and_garbage_is_bad_request() {
        assert_eq!(&gunzip(&gzip(b"hello"), 10).unwrap()[..], b"hello");
        let err = gunzip(b"not gzip", 10).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}
