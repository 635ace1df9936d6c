//! Framing: the length prefix before every frame body, and [`FrameReader`], which splits the
//! bytes of a connection into bodies.

use bytes::{Buf, Bytes, BytesMut};

use super::peek::read_u32;
use super::{PeerDecodeError, LENGTH_PREFIX, MAX_FRAME};

/// Splits the bytes of a connection into frame bodies.
///
/// [`push`](FrameReader::push) what the socket gave, then take complete bodies with
/// [`Iterator::next`] until it returns `None` (it returns `Some` again after more bytes are
/// pushed, so it is not a fused iterator). A length over the maximum is reported as soon as
/// its 4 bytes arrive, before anything is buffered for it; the stream cannot be resynchronised
/// after that, so the reader then yields nothing more and ignores further pushes.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
    failed: bool,
}

impl Default for FrameReader {
    /// A reader accepting bodies up to [`MAX_FRAME`].
    fn default() -> Self {
        FrameReader::new(MAX_FRAME)
    }
}

impl FrameReader {
    /// A reader accepting bodies up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> FrameReader {
        FrameReader {
            buf: BytesMut::new(),
            max_frame,
            failed: false,
        }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered and not yet returned as a body.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether an oversized frame stopped the reader.
    pub fn is_failed(&self) -> bool {
        self.failed
    }
}

impl Iterator for FrameReader {
    type Item = Result<Bytes, PeerDecodeError>;

    /// The next complete frame body, `None` until more bytes arrive, or the error that stops
    /// the reader (once).
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let len = read_u32(&self.buf, 0)? as usize;
        if len > self.max_frame {
            self.failed = true;
            self.buf = BytesMut::new();
            return Some(Err(PeerDecodeError::TooLarge {
                len,
                max: self.max_frame,
            }));
        }
        let total = LENGTH_PREFIX + len;
        if self.buf.len() < total {
            // Grow once to the whole frame rather than doubling through a large one.
            self.buf.reserve(total - self.buf.len());
            return None;
        }
        self.buf.advance(LENGTH_PREFIX);
        Some(Ok(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_stops_at_an_oversized_length_before_buffering_it() {
        let mut r = FrameReader::new(100);
        r.push(&101u32.to_le_bytes());
        assert_eq!(
            r.next(),
            Some(Err(PeerDecodeError::TooLarge { len: 101, max: 100 }))
        );
        assert!(r.is_failed());
        r.push(&[0; 200]);
        assert_eq!(r.next(), None);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn reader_yields_empty_bodies_and_waits_for_the_rest() {
        let mut r = FrameReader::new(100);
        r.push(&0u32.to_le_bytes());
        r.push(&3u32.to_le_bytes()[..2]);
        assert_eq!(r.next(), Some(Ok(Bytes::new())));
        assert_eq!(r.next(), None);
        r.push(&3u32.to_le_bytes()[2..]);
        r.push(b"ab");
        assert_eq!(r.next(), None);
        r.push(b"c");
        assert_eq!(r.next(), Some(Ok(Bytes::from_static(b"abc"))));
        assert_eq!(r.next(), None);
        assert_eq!(r.buffered(), 0);
    }
}
