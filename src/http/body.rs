//! Where a message body ends: Content-Length, chunked, or (responses only) connection close.
//!
//! The relay forwards the raw bytes a decoder consumed; the decoder hands the payload bytes to
//! an inspector on the side. A decoder never consumes bytes past the end of its message: those
//! belong to the next request on the connection.

use super::chunked::{ChunkedDecoder, ChunkedError};
use super::head::Framing;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    Chunked(ChunkedError),
    /// The peer closed the connection before the body was complete.
    Truncated,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Chunked(e) => write!(f, "{e}"),
            BodyError::Truncated => f.write_str("body ended early"),
        }
    }
}

impl std::error::Error for BodyError {}

pub enum BodyDecoder {
    Length {
        remaining: u64,
    },
    Chunked(ChunkedDecoder),
    /// Runs to end of stream; `finish_at_eof` marks it complete.
    Close {
        done: bool,
    },
}

impl BodyDecoder {
    /// `max_body` bounds chunked bodies as they stream; a Content-Length over the limit is refused
    /// from the head, before any body byte is read.
    pub fn new(framing: Framing, max_body: u64) -> Self {
        match framing {
            Framing::Empty => BodyDecoder::Length { remaining: 0 },
            Framing::Length(n) => BodyDecoder::Length { remaining: n },
            Framing::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new(max_body)),
            Framing::Close => BodyDecoder::Close { done: false },
        }
    }

    /// Consumes a prefix of `input` and returns its length; payload bytes go to `on_data`.
    pub fn decode(&mut self, input: &[u8], on_data: &mut dyn FnMut(&[u8])) -> Result<usize, BodyError> {
        match self {
            BodyDecoder::Length { remaining } => {
                let n = (*remaining).min(input.len() as u64) as usize;
                if n > 0 {
                    on_data(&input[..n]);
                }
                *remaining -= n as u64;
                Ok(n)
            }
            BodyDecoder::Chunked(d) => d.decode(input, on_data).map_err(BodyError::Chunked),
            BodyDecoder::Close { done } => {
                if *done {
                    return Ok(0);
                }
                if !input.is_empty() {
                    on_data(input);
                }
                Ok(input.len())
            }
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length { remaining } => *remaining == 0,
            BodyDecoder::Chunked(d) => d.is_done(),
            BodyDecoder::Close { done } => *done,
        }
    }

    /// The peer closed its side. Only a close-delimited body ends cleanly this way.
    pub fn finish_at_eof(&mut self) -> Result<(), BodyError> {
        match self {
            BodyDecoder::Close { done } => {
                *done = true;
                Ok(())
            }
            _ if self.is_done() => Ok(()),
            _ => Err(BodyError::Truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framing: Framing, input: &[u8]) -> (Result<usize, BodyError>, Vec<u8>, bool) {
        let mut d = BodyDecoder::new(framing, 1 << 20);
        let mut data = Vec::new();
        let r = d.decode(input, &mut |p| data.extend_from_slice(p));
        (r, data, d.is_done())
    }

    #[test]
    fn length_stops_at_the_end_of_the_body() {
        assert_eq!(run(Framing::Length(5), b"helloGET /"), (Ok(5), b"hello".to_vec(), true));
        assert_eq!(run(Framing::Length(5), b"hel"), (Ok(3), b"hel".to_vec(), false));
        assert_eq!(run(Framing::Empty, b"GET /"), (Ok(0), vec![], true));
    }

    #[test]
    fn chunked_stops_at_the_end_of_the_body() {
        assert_eq!(run(Framing::Chunked, b"2\r\nhi\r\n0\r\n\r\nNEXT"), (Ok(12), b"hi".to_vec(), true));
    }

    #[test]
    fn eof_ends_only_close_delimited_bodies() {
        let mut d = BodyDecoder::new(Framing::Close, 0);
        assert_eq!(d.decode(b"abc", &mut |_| {}), Ok(3));
        assert!(!d.is_done());
        assert_eq!(d.finish_at_eof(), Ok(()));
        assert!(d.is_done());
        let mut d = BodyDecoder::new(Framing::Length(4), 0);
        assert_eq!(d.decode(b"ab", &mut |_| {}), Ok(2));
        assert_eq!(d.finish_at_eof(), Err(BodyError::Truncated));
        let mut d = BodyDecoder::new(Framing::Chunked, 100);
        assert_eq!(d.finish_at_eof(), Err(BodyError::Truncated));
    }
}
