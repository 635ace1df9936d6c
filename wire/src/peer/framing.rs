//! Framing: the length prefix before every frame body, and [`FrameReader`], which splits the
//! bytes of a stream into bodies (the peer transport keeps one per incoming QUIC stream).

use bytes::{Buf, Bytes, BytesMut};

use super::{PeerDecodeError, LENGTH_PREFIX, MAX_FRAME};

/// Initial capacity of a body that spans reads: the length is the peer's claim, not memory to
/// reserve, so the buffer grows as data arrives from at most this much.
const BODY_RESERVE: usize = 1 << 20;

/// Splits the bytes of one stream into frame bodies (`u32` little-endian body length, then the
/// body).
///
/// [`push`](FrameReader::push) what the stream gave, in pieces of any size; every body it
/// completes goes to the callback, in order. A length over the maximum is refused as soon as
/// its 4 bytes arrive, before anything is buffered for it; the stream cannot be resynchronised
/// after that, so every later push is refused with the same error and buffers nothing.
///
/// A reader starts on a frame boundary, so a stream that replaces a lost or stopped one gets a
/// new reader (its sender starts it on a frame boundary too; see the server's transport).
///
/// Each body owns its allocation: one that arrived whole in a push is copied out of it, one
/// that spans pushes is reassembled in a buffer of its own. Keeping a body therefore never
/// pins the caller's receive buffer, nor a body pins another.
#[derive(Debug)]
pub struct FrameReader {
    max_frame: usize,
    /// A length prefix split across pushes: its bytes so far.
    header: [u8; LENGTH_PREFIX],
    have: usize,
    /// A body split across pushes: its bytes so far and its announced length.
    body: Option<(BytesMut, usize)>,
    /// The announced length that stopped the reader.
    failed: Option<usize>,
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
            max_frame,
            header: [0; LENGTH_PREFIX],
            have: 0,
            body: None,
            failed: None,
        }
    }

    /// The largest body accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Consumes `data`, the next bytes of the stream, calling `frame` with each body it
    /// completes. [`PeerDecodeError::TooLarge`] for a length over the maximum: the bodies
    /// before it were delivered, the rest of `data` is dropped, and the reader is stopped.
    pub fn push(
        &mut self,
        mut data: &[u8],
        mut frame: impl FnMut(Bytes),
    ) -> Result<(), PeerDecodeError> {
        if let Some(len) = self.failed {
            return Err(self.too_large(len));
        }
        while !data.is_empty() {
            if let Some((body, need)) = &mut self.body {
                let take = (*need - body.len()).min(data.len());
                body.extend_from_slice(&data[..take]);
                data.advance(take);
                if body.len() == *need {
                    if let Some((body, _)) = self.body.take() {
                        frame(body.freeze());
                    }
                }
                continue;
            }
            let len = if self.have == 0 && data.len() >= LENGTH_PREFIX {
                data.get_u32_le() as usize
            } else {
                let take = (LENGTH_PREFIX - self.have).min(data.len());
                self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
                data.advance(take);
                self.have += take;
                if self.have < LENGTH_PREFIX {
                    return Ok(());
                }
                self.have = 0;
                u32::from_le_bytes(self.header) as usize
            };
            if len > self.max_frame {
                self.failed = Some(len);
                return Err(self.too_large(len));
            }
            if data.len() >= len {
                // Copied, not sliced: a slice would pin the whole receive block it lives in
                // for as long as the application keeps the frame.
                frame(Bytes::copy_from_slice(&data[..len]));
                data.advance(len);
            } else {
                // Grown as data arrives: the length is the peer's claim, not memory to reserve.
                self.body = Some((BytesMut::with_capacity(len.min(BODY_RESERVE)), len));
            }
        }
        Ok(())
    }

    /// Bytes of the stream taken and not yet returned as a body: the start of the next frame
    /// (its length prefix counts once read, as it did before it was parsed).
    pub fn buffered(&self) -> usize {
        self.have
            + self
                .body
                .as_ref()
                .map_or(0, |(body, _)| LENGTH_PREFIX + body.len())
    }

    /// Whether an oversized frame stopped the reader.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    fn too_large(&self, len: usize) -> PeerDecodeError {
        PeerDecodeError::TooLarge {
            len,
            max: self.max_frame,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `data`, collecting the bodies.
    fn push(r: &mut FrameReader, data: &[u8]) -> Result<Vec<Vec<u8>>, PeerDecodeError> {
        let mut out = Vec::new();
        r.push(data, |b| out.push(b.to_vec()))?;
        Ok(out)
    }

    fn encode(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for b in bodies {
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(b);
        }
        v
    }

    #[test]
    fn reader_stops_at_an_oversized_length_before_buffering_it() {
        let mut r = FrameReader::new(100);
        let too_large = PeerDecodeError::TooLarge { len: 101, max: 100 };
        assert_eq!(push(&mut r, &101u32.to_le_bytes()), Err(too_large.clone()));
        assert!(r.is_failed());
        assert_eq!(push(&mut r, &[0; 200]), Err(too_large));
        assert_eq!(r.buffered(), 0);
        // A 4 GiB announcement, split: refused once its last byte arrives.
        let mut r = FrameReader::default();
        assert_eq!(push(&mut r, &[0xff; 3]), Ok(vec![]));
        assert_eq!(
            push(&mut r, &[0xff]),
            Err(PeerDecodeError::TooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME
            })
        );
    }

    #[test]
    fn reader_delivers_the_bodies_before_an_oversized_length() {
        let mut r = FrameReader::new(10);
        let mut wire = encode(&[b"ok".to_vec()]);
        wire.extend_from_slice(&encode(&[vec![0; 11]]));
        let mut got = Vec::new();
        let res = r.push(&wire, |b| got.push(b));
        assert_eq!(res, Err(PeerDecodeError::TooLarge { len: 11, max: 10 }));
        assert_eq!(got, vec![Bytes::from_static(b"ok")]);
    }

    #[test]
    fn reader_yields_empty_bodies_and_waits_for_the_rest() {
        let mut r = FrameReader::new(100);
        let mut got = push(&mut r, &0u32.to_le_bytes()).expect("ok");
        got.extend(push(&mut r, &3u32.to_le_bytes()[..2]).expect("ok"));
        assert_eq!(got, vec![Vec::<u8>::new()]);
        assert_eq!(r.buffered(), 2);
        assert_eq!(push(&mut r, &3u32.to_le_bytes()[2..]), Ok(vec![]));
        assert_eq!(push(&mut r, b"ab"), Ok(vec![]));
        assert_eq!(r.buffered(), 6);
        assert_eq!(push(&mut r, b"c"), Ok(vec![b"abc".to_vec()]));
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn reader_splits_at_every_boundary() {
        let bodies: Vec<Vec<u8>> = vec![
            b"hello".to_vec(),
            Vec::new(),
            (0..3000u32).map(|i| i as u8).collect(),
            b"x".to_vec(),
        ];
        let wire = encode(&bodies);
        // Every split point, and byte-at-a-time.
        for cut in 0..=wire.len() {
            let mut r = FrameReader::new(1 << 20);
            let mut got = push(&mut r, &wire[..cut]).expect("ok");
            got.extend(push(&mut r, &wire[cut..]).expect("ok"));
            assert_eq!(got, bodies, "cut at {cut}");
            assert_eq!(r.buffered(), 0);
        }
        let mut r = FrameReader::new(1 << 20);
        let mut got = Vec::new();
        for b in &wire {
            got.extend(push(&mut r, std::slice::from_ref(b)).expect("ok"));
        }
        assert_eq!(got, bodies);
    }

    #[test]
    fn a_body_larger_than_the_initial_reserve_is_reassembled() {
        let big: Vec<u8> = (0..3 * BODY_RESERVE + 7).map(|i| (i % 251) as u8).collect();
        let wire = encode(&[big.clone(), b"after".to_vec()]);
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        for piece in wire.chunks(64 * 1024 + 3) {
            got.extend(push(&mut r, piece).expect("ok"));
        }
        assert_eq!(got, vec![big, b"after".to_vec()]);
        assert_eq!(r.buffered(), 0);
    }
}
