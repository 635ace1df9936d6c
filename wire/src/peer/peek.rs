//! Routing without decoding: [`peek_partition`] reads the partition of a frame body so the
//! IO core can pick the core that decodes it.

use engine::distro::PARTITIONS;

use crate::peer_fb as fb;

/// The partition of a [`Frame::Partition`](super::Frame::Partition) body, or `None` for
/// another kind of frame or bytes that do not lead to a partition below `PARTITIONS`.
///
/// Reads two tables by hand with bounds-checked slices, no verification, so it costs the same
/// for a 16 MiB snapshot chunk as for an ack: the IO core uses it to pick the core that decodes
/// the frame, and [`decode_frame`](super::decode_frame) still checks everything there.
pub fn peek_partition(frame_body: &[u8]) -> Option<u16> {
    let buf = frame_body;
    let root = read_u32(buf, 0)? as usize;
    let body_type = match field_pos(buf, root, fb::Frame::VT_BODY_TYPE)? {
        Some(pos) => *buf.get(pos)?,
        None => return None, // NONE: no body.
    };
    if body_type != fb::FrameBody::Partition.0 {
        return None;
    }
    let body_at = field_pos(buf, root, fb::Frame::VT_BODY)??;
    let table = body_at.checked_add(read_u32(buf, body_at)? as usize)?;
    let partition = match field_pos(buf, table, fb::Partition::VT_PARTITION)? {
        Some(pos) => read_u16(buf, pos)?,
        None => 0, // Scalars equal to their default are not written.
    };
    (partition < PARTITIONS).then_some(partition)
}

/// Where field `voffset` of the table at `table` is: `Some(None)` if the table omits it,
/// `None` if the bytes do not hold such a table.
fn field_pos(buf: &[u8], table: usize, voffset: u16) -> Option<Option<usize>> {
    let soffset = i64::from(read_u32(buf, table)? as i32);
    let vtable = usize::try_from(i64::try_from(table).ok()?.checked_sub(soffset)?).ok()?;
    let vtable_len = read_u16(buf, vtable)?;
    if voffset.checked_add(2)? > vtable_len {
        return Some(None);
    }
    let field = read_u16(buf, vtable.checked_add(usize::from(voffset))?)?;
    if field == 0 {
        return Some(None);
    }
    Some(Some(table.checked_add(usize::from(field))?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use engine::distro::{NodeId, PeerMsg};

    use super::*;
    use crate::peer::{decode_frame, encode_frame, Frame, LENGTH_PREFIX};

    fn frame_bytes(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(frame, &mut out);
        out
    }

    #[test]
    fn peek_reads_the_partition_of_partition_frames_only() {
        for p in [0, 1, 17, PARTITIONS - 1] {
            let body = frame_bytes(&Frame::Partition {
                partition: p,
                msg: PeerMsg::SyncAck { seq: 9 },
            });
            assert_eq!(peek_partition(&body[LENGTH_PREFIX..]), Some(p));
        }
        let body = frame_bytes(&Frame::Hello {
            node: NodeId::new("10.0.0.1:8848"),
            incarnation: 3,
        });
        assert_eq!(peek_partition(&body[LENGTH_PREFIX..]), None);
        // Out of range: no route, and decoding refuses it too.
        let body = frame_bytes(&Frame::Partition {
            partition: PARTITIONS,
            msg: PeerMsg::SyncAck { seq: 9 },
        });
        assert_eq!(peek_partition(&body[LENGTH_PREFIX..]), None);
        assert!(decode_frame(&body[LENGTH_PREFIX..]).is_err());
    }

    #[test]
    fn peek_survives_any_prefix_and_garbage() {
        let body = frame_bytes(&Frame::Partition {
            partition: 5,
            msg: PeerMsg::Digest {
                round: 1,
                root: 2,
                clock: 3,
            },
        });
        for n in 0..body.len() {
            let _ = peek_partition(&body[..n]);
        }
        let _ = peek_partition(&[0xff; 64]);
        let _ = peek_partition(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]);
    }
}
