//! The Raft message codec (`wire::raft`) on its seeds, on mutations of them (the stable
//! mirror of the `raft_message` fuzz target), and on hostile inputs.
#![allow(clippy::unwrap_used)]

use engine::store::naming::{NamingCommand, PersistentInstance, ServiceRef};
use engine::store::StoreCommand;
use nacelle_wire::fuzzing::Mutator;
use nacelle_wire::peer::{decode_frame, encode_body, Frame};
use nacelle_wire::raft::{self as codec, decode_raft, encode_raft, MAX_RAFT_MESSAGE};
use raft::{Batch, RaftMessage, Request};

#[test]
fn every_seed_decodes_and_round_trips_inside_a_peer_frame() {
    for (name, bytes) in codec::seeds() {
        let msg = decode_raft(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let body = encode_body(&Frame::Raft {
            payload: bytes.clone(),
        });
        let Frame::Raft { payload } = decode_frame(&body).unwrap() else {
            panic!("{name}: not a raft frame");
        };
        assert_eq!(payload, bytes, "{name}");
        assert_eq!(
            format!("{msg:?}"),
            format!("{:?}", decode_raft(&payload).unwrap())
        );
        codec::fuzz_property(&bytes);
    }
}

#[test]
fn mutated_messages_keep_the_property() {
    let corpus: Vec<Vec<u8>> = codec::seeds().into_iter().map(|(_, b)| b).collect();
    let mut rng = Mutator::new(0x5eed_4af7);
    let mut decoded = 0;
    for _ in 0..20_000 {
        let input = rng.mutant(&corpus);
        if decode_raft(&input).is_ok() {
            decoded += 1;
        }
        codec::fuzz_property(&input);
    }
    // The mutations reach past the first byte: some still decode.
    assert!(decoded > 100, "{decoded}");
}

#[test]
fn every_cut_and_trailing_bytes_are_errors() {
    for (name, bytes) in codec::seeds() {
        for cut in 0..bytes.len() {
            assert!(decode_raft(&bytes[..cut]).is_err(), "{name} cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_raft(&longer).is_err(), "{name} with a trailing byte");
    }
}

fn forward(cmd: StoreCommand) -> Vec<u8> {
    encode_raft(&RaftMessage::Request {
        call: 9,
        body: Request::Forward(Batch(vec![cmd])),
    })
    .unwrap()
}

fn register(ip: &str, service: &str) -> StoreCommand {
    StoreCommand::Naming(NamingCommand::Register {
        service: ServiceRef {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            name: service.into(),
        },
        instance: PersistentInstance {
            ip: ip.into(),
            port: 3306,
            cluster: "DEFAULT".into(),
            weight: 1.0,
            healthy: true,
            enabled: true,
            metadata: Default::default(),
        },
    })
}

#[test]
fn a_forwarded_command_a_client_could_not_send_is_refused() {
    assert!(decode_raft(&forward(register("127.0.0.1", "db"))).is_ok());
    let err = decode_raft(&forward(register("127.0.0.1 ; rm", "db"))).unwrap_err();
    assert!(err.0.contains("forwarded command"), "{err}");
    assert!(decode_raft(&forward(register("127.0.0.1", ""))).is_err());
}

#[test]
fn hostile_inputs_are_errors_without_allocating_what_they_claim() {
    // A forward claiming 2^32 commands in five bytes.
    let mut claim = vec![0u8, 9, 3];
    claim.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode_raft(&claim).is_err());
    assert!(decode_raft(&vec![0u8; MAX_RAFT_MESSAGE + 1]).is_err());
    assert!(decode_raft(&[]).is_err());
    assert!(decode_raft(&[0xff; 64]).is_err());
}

/// The checked-in corpus of the fuzz target is what `examples/fuzz_corpus.rs` writes, and
/// every file of it keeps the property.
#[test]
fn the_fuzz_corpus_is_up_to_date() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/raft_message");
    for (i, (name, bytes)) in codec::seeds().iter().enumerate() {
        let path = dir.join(format!("seed-{i:02}-{name}.bin"));
        let found = std::fs::read(&path).unwrap_or_default();
        assert!(
            &found == bytes,
            "{} is stale: run `cargo run --release -p nacelle-wire --example fuzz_corpus`",
            path.display()
        );
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        codec::fuzz_property(&std::fs::read(entry.unwrap().path()).unwrap());
    }
}
