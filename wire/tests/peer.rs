//! The node-to-node codec (`wire::peer`): round trips of every frame, message, sync item,
//! client operation and result; stream splitting at every byte boundary; and the robustness
//! invariant — no input makes decoding panic, and whatever decodes re-encodes to the same.

mod peer_samples;

use std::net::Ipv4Addr;
use std::sync::Arc;

use engine::distro::{EntryState, PeerMsg, SyncItem, PARTITIONS};
use engine::{ClientId, Host, Instance, Metadata, ServiceKey};
use nacelle_wire::fuzzing::peer_stream;
use nacelle_wire::peer::{
    decode_frame, encode_frame, peek_partition, Encoder, Frame, FrameReader, PeerDecodeError,
    LENGTH_PREFIX, MAX_FRAME,
};
use peer_samples::*;
use proptest::prelude::*;

/// `ClientOp` has no `PartialEq`; `Debug` shows every field (floats exactly), so equal
/// `Debug` text is equal values.
fn same(a: &Frame, b: &Frame) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out);
    out
}

fn body(frame: &Frame) -> Vec<u8> {
    encoded(frame)[LENGTH_PREFIX..].to_vec()
}

fn assert_round_trip(frame: &Frame) {
    let bytes = encoded(frame);
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    assert_eq!(len, bytes.len() - LENGTH_PREFIX, "length prefix");
    let body = &bytes[LENGTH_PREFIX..];
    let back = decode_frame(body).unwrap_or_else(|e| panic!("{e} decoding {frame:?}"));
    assert!(same(frame, &back), "\n sent {frame:?}\n got  {back:?}");
    match frame {
        Frame::Partition { partition, .. } => assert_eq!(peek_partition(body), Some(*partition)),
        _ => assert_eq!(peek_partition(body), None),
    }
}

#[test]
fn every_frame_round_trips() {
    let frames = all_frames();
    assert!(frames.len() > 30);
    for frame in &frames {
        assert_round_trip(frame);
    }
}

#[test]
fn big_batches_round_trip_and_share_repeated_parts() {
    for frame in [
        Frame::Partition {
            partition: 63,
            msg: upsert_batch(512),
        },
        Frame::Partition {
            partition: 0,
            msg: snapshot_chunk(2_000),
        },
    ] {
        assert_round_trip(&frame);
    }
    // 512 upserts in four services: each service (and namespace, group, cluster) is written
    // once, so a one-instance upsert costs well under 200 bytes.
    let n = encoded(&Frame::Partition {
        partition: 1,
        msg: upsert_batch(512),
    })
    .len();
    assert!(n < 512 * 200, "{n} bytes for 512 upserts");
}

#[test]
fn a_reused_encoder_writes_the_same_bytes_and_appends() {
    let frames = all_frames();
    let mut enc = Encoder::new();
    let mut stream = Vec::new();
    for f in &frames {
        enc.encode_frame(f, &mut stream);
    }
    let mut expected = Vec::new();
    for f in &frames {
        expected.extend_from_slice(&encoded(f));
    }
    assert_eq!(stream, expected);
}

#[test]
fn decoded_values_share_what_repeats() {
    let Frame::Partition {
        msg: PeerMsg::Sync { items, .. },
        ..
    } = decode_frame(&body(&Frame::Partition {
        partition: 1,
        msg: upsert_batch(16),
    }))
    .expect("decodes")
    else {
        panic!("not a sync")
    };
    let keys: Vec<&ServiceKey> = items
        .iter()
        .map(|i| match i {
            SyncItem::Upsert { entry, .. } => &entry.service,
            other => panic!("{other:?}"),
        })
        .collect();
    // Items 0 and 4 are in the same service: one key, built once.
    assert!(keys[0].ptr_eq(keys[4]));
}

#[test]
fn frame_reader_splits_at_every_byte_boundary() {
    let frames = all_frames();
    let bodies: Vec<Vec<u8>> = frames.iter().map(body).collect();
    let stream: Vec<u8> = frames.iter().flat_map(encoded).collect();
    let push = |r: &mut FrameReader, data: &[u8], got: &mut Vec<Vec<u8>>| {
        r.push(data, |b| got.push(b.to_vec()))
            .expect("within limits");
    };
    for cut in 0..=stream.len() {
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        push(&mut r, &stream[..cut], &mut got);
        push(&mut r, &stream[cut..], &mut got);
        assert_eq!(got, bodies, "cut at {cut}");
        assert_eq!(r.buffered(), 0);
    }
    // And one byte at a time.
    let mut r = FrameReader::default();
    let mut got = Vec::new();
    for b in &stream {
        push(&mut r, std::slice::from_ref(b), &mut got);
    }
    assert_eq!(got, bodies);
    for (b, f) in got.iter().zip(&frames) {
        assert!(same(&decode_frame(b).expect("decodes"), f));
    }
}

#[test]
fn a_frame_over_the_maximum_is_an_error() {
    let big = encoded(&Frame::Partition {
        partition: 2,
        msg: upsert_batch(100),
    });
    let len = big.len() - LENGTH_PREFIX;
    let mut r = FrameReader::new(len - 1);
    let mut got = Vec::new();
    assert_eq!(
        r.push(&big, |b| got.push(b)),
        Err(PeerDecodeError::TooLarge { len, max: len - 1 })
    );
    assert!(got.is_empty() && r.is_failed());
    // Exactly the maximum is fine.
    let mut r = FrameReader::new(len);
    assert_eq!(r.push(&big, |b| got.push(b)), Ok(()));
    assert_eq!(got.iter().map(|b| b.len()).collect::<Vec<_>>(), [len]);
    // The default limit refuses a 4 GiB announcement at once.
    let mut r = FrameReader::default();
    assert!(matches!(
        r.push(&u32::MAX.to_le_bytes(), |_| {}),
        Err(PeerDecodeError::TooLarge { max: MAX_FRAME, .. })
    ));
}

#[test]
fn truncated_frames_are_errors() {
    for frame in all_frames().iter().take(12) {
        let b = body(frame);
        let mut decoded = 0;
        for n in 0..b.len() {
            let _ = peek_partition(&b[..n]);
            match decode_frame(&b[..n]) {
                Err(_) => {}
                // Only alignment padding after the last string can go unnoticed.
                Ok(back) => {
                    assert!(
                        same(frame, &back) && b.len() - n < 8,
                        "{n} of {} bytes",
                        b.len()
                    );
                    decoded += 1;
                }
            }
        }
        assert!(decoded < 8);
    }
}

#[test]
fn every_single_bit_flip_is_survived() {
    // Every bit of a few small frames: most flips are errors, the rest decode to something
    // valid that re-encodes to an equal frame.
    let frames = all_frames();
    for frame in frames.iter().filter(|f| body(f).len() < 600).take(15) {
        let b = body(frame);
        for bit in 0..b.len() * 8 {
            let mut m = b.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            check_invariants(&m);
        }
    }
}

#[test]
fn garbage_and_oversized_inputs_are_errors() {
    assert!(decode_frame(&[]).is_err());
    assert!(decode_frame(&[0; 3]).is_err());
    assert!(decode_frame(&[0; 64]).is_err());
    assert!(decode_frame(&[0xff; 64]).is_err());
    // A body bigger than any frame, of zeros and of a repeated valid frame.
    let zeros = vec![0u8; MAX_FRAME + 1];
    assert!(decode_frame(&zeros).is_err());
    assert_eq!(peek_partition(&zeros), None);
    let mut rng = Rng(7);
    for len in [1, 2, 4, 8, 16, 100, 1_000, 100_000] {
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            check_invariants(&bytes);
        }
    }
}

#[test]
fn invalid_values_are_refused() {
    // A valid buffer can still carry values a client could not send: each is refused.
    let cases = [
        // An unknown partition.
        Frame::Partition {
            partition: PARTITIONS,
            msg: PeerMsg::SyncAck { seq: 1 },
        },
        // An upsert without instances.
        Frame::Partition {
            partition: 1,
            msg: PeerMsg::Sync {
                seq: 1,
                items: vec![SyncItem::Upsert {
                    client: ClientId::Conn(1),
                    entry: EntryState {
                        service: service("", "", "s"),
                        rev: 1,
                        publish: Arc::from(Vec::<Instance>::new()),
                    },
                }],
            },
        },
        // A named client whose name is an IPv4 address (a second identity of a V4 client).
        Frame::Partition {
            partition: 1,
            msg: PeerMsg::Resync {
                clients: vec![ClientId::Named("10.0.0.1".into(), 80)],
            },
        },
        // An instance whose cluster name Nacos refuses: from_parts refuses it too, but an
        // instance can be built with any cluster through `Instance::new`.
        Frame::Partition {
            partition: 1,
            msg: PeerMsg::Sync {
                seq: 1,
                items: vec![SyncItem::Upsert {
                    client: ClientId::Conn(1),
                    entry: EntryState {
                        service: service("", "", "s"),
                        rev: 1,
                        publish: Arc::from(vec![Instance::new(
                            Host::V4(Ipv4Addr::LOCALHOST),
                            1,
                            "bad_cluster".into(),
                        )]),
                    },
                }],
            },
        },
        Frame::ForwardReply {
            id: nacelle_wire::peer::ForwardId { core: 1, token: 1 },
            result: Ok(engine::OpOutcome::Changed),
        },
    ];
    for (i, frame) in cases.iter().enumerate() {
        let r = decode_frame(&body(frame));
        if i == cases.len() - 1 {
            assert!(r.is_ok(), "control case");
        } else {
            assert!(
                matches!(r, Err(PeerDecodeError::Invalid(_))),
                "{frame:?} gave {r:?}"
            );
        }
    }
}

/// Decoding `bytes` must not panic; if it succeeds, the frame re-encodes and decodes to an
/// equal frame (decoded values are valid values) and `peek_partition` agrees with it.
fn check_invariants(bytes: &[u8]) {
    let peeked = peek_partition(bytes);
    if let Ok(frame) = decode_frame(bytes) {
        match &frame {
            Frame::Partition { partition, .. } => assert_eq!(peeked, Some(*partition)),
            _ => assert_eq!(peeked, None),
        }
        let again = decode_frame(&body(&frame)).expect("a decoded frame re-encodes validly");
        assert!(same(&frame, &again), "{frame:?}\n{again:?}");
    }
    // The stream side, as the transport reads it (whole and in pieces: the same bodies).
    for b in peer_stream(bytes, 1 << 16).iter().take(64) {
        let _ = decode_frame(b);
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The stable-Rust stand-in for `cargo fuzz run peer_frame`: a few thousand seeded mutations
/// of valid frames (bit flips, random bytes, interesting words, cuts, splices), each checked
/// with [`check_invariants`].
#[test]
fn mutated_frames_never_panic() {
    let bodies: Vec<Vec<u8>> = all_frames()
        .iter()
        .map(body)
        .filter(|b| b.len() < 4_000)
        .collect();
    let mut rng = Rng(0x5eed_f00d_1234_5678);
    let mut decoded = 0;
    const ROUNDS: usize = 6_000;
    for _ in 0..ROUNDS {
        let mut m = bodies[rng.below(bodies.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut m, &mut rng, &bodies);
        }
        if decode_frame(&m).is_ok() {
            decoded += 1;
        }
        check_invariants(&m);
    }
    // The mutations hit values, not just the framing: some survive, most do not.
    assert!(
        decoded > 0 && decoded < ROUNDS,
        "{decoded} of {ROUNDS} decoded"
    );
}

/// The fuzzing seeds (`fuzz/corpus/peer_frame/seed-*`, written by `examples/peer_corpus.rs`)
/// still decode, so the fuzzer starts from frames that reach every decoder path; anything the
/// fuzzer added beside them must at least not break the invariants.
#[test]
fn the_fuzz_corpus_decodes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/peer_frame");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/peer_frame exists") {
        let path = entry.expect("readable directory").path();
        let bytes = std::fs::read(&path).expect("readable seed");
        check_invariants(&bytes);
        let is_seed = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"));
        if is_seed {
            seeds += 1;
            let mut r = FrameReader::default();
            let mut frames = 0;
            r.push(&bytes, |body| {
                decode_frame(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                frames += 1;
            })
            .expect("within limits");
            assert!(frames > 0 && r.buffered() == 0, "{}", path.display());
        }
    }
    assert!(
        seeds >= 20,
        "only {seeds} seeds: run the peer_corpus example"
    );
}

fn mutate(m: &mut Vec<u8>, rng: &mut Rng, corpus: &[Vec<u8>]) {
    if m.is_empty() {
        m.push(rng.next() as u8);
        return;
    }
    let at = rng.below(m.len());
    match rng.below(7) {
        0 => m[at] ^= 1 << rng.below(8),
        1 => m[at] = rng.next() as u8,
        2 => {
            let word: u32 =
                [0, 1, 4, 0x7fff_ffff, 0x8000_0000, u32::MAX, m.len() as u32][rng.below(7)];
            for (k, b) in word.to_le_bytes().into_iter().enumerate() {
                if let Some(x) = m.get_mut(at + k) {
                    *x = b;
                }
            }
        }
        3 => m.truncate(at),
        4 => {
            let n = rng.below(16).min(m.len() - at);
            m.drain(at..at + n);
        }
        5 => {
            let other = &corpus[rng.below(corpus.len())];
            let from = rng.below(other.len());
            let n = rng.below(32).min(other.len() - from);
            let len = n.min(m.len() - at);
            m[at..at + len].copy_from_slice(&other[from..from + len]);
        }
        _ => {
            let n = rng.below(8);
            for _ in 0..n {
                m.insert(at, rng.next() as u8);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property: random batches round trip.

fn arb_client() -> impl Strategy<Value = ClientId> {
    prop_oneof![
        any::<u64>().prop_map(ClientId::Conn),
        (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| ClientId::V4(Ipv4Addr::from(ip), port)),
        ("[a-z][a-z0-9-]{0,20}(\\.[a-z]{1,8}){0,2}", any::<u16>())
            .prop_map(|(n, port)| ClientId::Named(n.into(), port)),
    ]
}

fn arb_service() -> impl Strategy<Value = ServiceKey> {
    (
        "[a-z0-9-]{0,12}",
        "[A-Za-z_]{0,12}",
        "[a-zA-Z0-9.:_-]{1,40}",
    )
        .prop_map(|(ns, g, n)| service(&ns, &g, &n))
}

fn arb_instance() -> impl Strategy<Value = Instance> {
    (
        prop_oneof![
            any::<u32>().prop_map(|ip| Host::V4(Ipv4Addr::from(ip))),
            "[a-z][a-z0-9.-]{0,30}".prop_map(|h| Host::parse(&h).expect("host")),
        ],
        any::<u16>(),
        (0u32..=1_000_000).prop_map(|w| f64::from(w) / 100.0),
        any::<bool>(),
        any::<bool>(),
        "[A-Za-z0-9.-]{1,20}",
        proptest::collection::btree_map("[ -~]{1,10}", "\\PC{0,20}", 0..4),
        proptest::option::of("\\PC{0,40}"),
    )
        .prop_map(
            |(host, port, weight, healthy, enabled, cluster, meta, id)| {
                Instance::from_parts(
                    host,
                    port,
                    weight,
                    healthy,
                    enabled,
                    cluster.into(),
                    Metadata::from_map(&meta).expect("metadata"),
                    id.as_deref(),
                )
                .expect("instance")
            },
        )
}

fn arb_item() -> impl Strategy<Value = SyncItem> {
    prop_oneof![
        (
            arb_client(),
            arb_service(),
            any::<u64>(),
            proptest::collection::vec(arb_instance(), 1..4)
        )
            .prop_map(|(client, service, rev, v)| SyncItem::Upsert {
                client,
                entry: EntryState {
                    service,
                    rev,
                    publish: Arc::from(v),
                },
            }),
        (arb_client(), arb_service(), any::<u64>()).prop_map(|(client, service, rev)| {
            SyncItem::Remove {
                client,
                service,
                rev,
            }
        }),
        (arb_client(), any::<u64>()).prop_map(|(client, rev)| SyncItem::Drop { client, rev }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_sync_batches_round_trip(
        partition in 0..PARTITIONS,
        seq in any::<u64>(),
        items in proptest::collection::vec(arb_item(), 0..40),
    ) {
        let frame = Frame::Partition { partition, msg: PeerMsg::Sync { seq, items } };
        let back = decode_frame(&body(&frame)).expect("decodes");
        prop_assert!(same(&frame, &back));
    }
}
