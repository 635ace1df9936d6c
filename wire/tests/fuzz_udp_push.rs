//! Stable-Rust mirror of the `udp_ack` fuzz target (`fuzz/`, nightly): the same property
//! (`nacelle_wire::udp_push::fuzz_property`) over the checked-in corpus and seeded mutations
//! of the seeds, plus hostile datagrams chosen by hand, so CI checks it on every build.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use nacelle_wire::fuzzing::Mutator;
use nacelle_wire::udp_push::{self, fuzz_property, fuzz_seeds};

#[test]
fn udp_ack_corpus_holds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/udp_ack");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        fuzz_property(&bytes);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed-") {
            found.push((name, bytes));
        }
    }
    found.sort();
    let expected: Vec<(String, Vec<u8>)> = fuzz_seeds()
        .into_iter()
        .enumerate()
        .map(|(i, (n, b))| (format!("seed-{i:02}-{n}.bin"), b))
        .collect();
    assert!(
        found == expected,
        "fuzz/corpus/udp_ack seeds are stale: run `cargo run --release -p nacelle-wire --example fuzz_corpus`"
    );
}

#[test]
fn mutated_datagrams_keep_the_property() {
    let corpus: Vec<Vec<u8>> = fuzz_seeds().into_iter().map(|(_, b)| b).collect();
    let mut rng = Mutator::new(0x0d9_ac4);
    let mut acks = 0;
    for _ in 0..20_000 {
        let m = rng.mutant(&corpus);
        fuzz_property(&m);
        acks += usize::from(udp_push::decode_ack(&m).is_ok());
    }
    // The mutations must reach past the JSON parser now and then, or they test nothing.
    assert!(acks > 100, "only {acks} mutants decoded as acks");
}

#[test]
fn hostile_datagrams_keep_the_property() {
    let mut big_gzip = udp_push::gzip(&vec![b'{'; 4 << 20]);
    big_gzip.truncate(big_gzip.len().min(60_000));
    for bytes in [
        vec![],
        vec![0x1f, 0x8b],
        vec![
            0x1f, 0x8b, 8, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        // A gzip bomb: 4 MiB of one byte, more than a client inflates.
        udp_push::gzip(&vec![b'a'; 4 << 20]),
        big_gzip,
        br#"{"type":"push-ack","lastRefTime":18446744073709551615,"data":""}"#.to_vec(),
        br#"{"type":"push-ack","lastRefTime":18446744073709551616,"data":""}"#.to_vec(),
        vec![b'['; 10_000],
    ] {
        fuzz_property(&bytes);
    }
}
