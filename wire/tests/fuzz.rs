//! Stable-Rust mirrors of the `grpc_payload` and `http_params` fuzz targets (`fuzz/`, nightly):
//! the same property functions (`nacelle_wire::fuzzing`) over seeded mutations of the seeds,
//! the checked-in corpus, and a few hand-picked hostile inputs, so CI checks the properties on
//! every build.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use nacelle_wire::fuzzing::{self, seeds, Mutator};
use nacelle_wire::proto::Payload;
use prost::Message;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every file of `fuzz/corpus/<target>` goes through `property`; the `seed-*` files are
/// exactly what `examples/fuzz_corpus.rs` writes from `seeds`.
fn corpus_holds(target: &str, seeds: &[(&str, Vec<u8>)], property: fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        property(&bytes);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed-") {
            found.push((name, bytes));
        }
    }
    found.sort();
    let expected: Vec<(String, Vec<u8>)> = seeds
        .iter()
        .enumerate()
        .map(|(i, (n, b))| (format!("seed-{i:02}-{n}.bin"), b.clone()))
        .collect();
    assert!(
        found == expected,
        "fuzz/corpus/{target} seeds are stale: run `cargo run --release -p nacelle-wire --example fuzz_corpus`"
    );
}

#[test]
fn grpc_payload_corpus_holds() {
    corpus_holds("grpc_payload", &seeds::grpc_payload(), |data| {
        fuzzing::grpc_payload(data);
        fuzzing::grpc_unary_body(data);
    });
}

#[test]
fn http_params_corpus_holds() {
    corpus_holds("http_params", &seeds::http_params(), fuzzing::http_params);
}

/// The payload seeds decode and carry the JSON the SDKs send.
#[test]
fn grpc_seeds_are_payloads_with_json_bodies() {
    for (name, bytes) in seeds::grpc_payload() {
        let p = Payload::decode(bytes.as_slice()).unwrap();
        let env = nacelle_wire::payload::open(&p).unwrap();
        serde_json::from_slice::<serde_json::Value>(env.body)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Mutations of whole payloads (which mostly break the protobuf framing) and of their JSON
/// bodies re-wrapped in a valid envelope (which reach the naming decoders).
#[test]
fn mutated_payloads_keep_the_properties() {
    let corpus: Vec<Vec<u8>> = seeds::grpc_payload().into_iter().map(|(_, b)| b).collect();
    let bodies: Vec<Vec<u8>> = corpus
        .iter()
        .map(|b| Payload::decode(b.as_slice()).unwrap().body.unwrap().value)
        .collect();
    let mut rng = Mutator::new(0x5eed_6a7c);
    let mut reached = 0;
    const ROUNDS: usize = 6_000;
    for round in 0..ROUNDS {
        let input = if round % 3 == 0 {
            rng.mutant(&corpus)
        } else {
            let i = rng.below(corpus.len());
            let mut p = Payload::decode(corpus[i].as_slice()).unwrap();
            let mut body = bodies[i].clone();
            for _ in 0..1 + rng.below(4) {
                rng.mutate(&mut body, &bodies);
            }
            if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                reached += 1;
            }
            p.body.as_mut().unwrap().value = body;
            p.encode_to_vec()
        };
        fuzzing::grpc_payload(&input);
        fuzzing::grpc_unary_body(&input);
    }
    assert!(
        reached > ROUNDS / 20,
        "only {reached} mutated bodies were JSON"
    );
}

#[test]
fn mutated_http_requests_keep_the_properties() {
    let corpus: Vec<Vec<u8>> = seeds::http_params().into_iter().map(|(_, b)| b).collect();
    let mut rng = Mutator::new(0x5eed_4177);
    for _ in 0..8_000 {
        fuzzing::http_params(&rng.mutant(&corpus));
    }
}

/// Inputs a fuzzer would take a while to build.
#[test]
fn hostile_http_requests_keep_the_properties() {
    for input in [
        &b""[..],
        b"\n",
        b"serviceName=%FF%FE&ip=%00&port=-0\n",
        b"serviceName=a&groupName=%40%40&ip=1.2.3.4&port=65535\n",
        b"serviceName=%20a%20&groupName=%20&namespaceId=%20&ip=01.2.3.4&port=+80\n",
        b"serviceName=a&ip=1.2.3.4&port=1&weight=1e400&metadata=%7B%22a%22%3A%5B1%5D%7D\n",
        b"serviceName=a&ip=1.2.3.4&port=1&weight=-0&metadata=a%3Db%2C%2Cc%3D\n",
        b"serviceName=a&ip=a%22b%5C&port=1&clusterName=x\n",
        b"serviceName=a&beat=%7B%22port%22%3A99999%7D\n",
        b"serviceName=a&beat=%7B%22ip%22%3A%22h%22%2C%22port%22%3A1%2C%22metadata%22%3A7%7D\n",
        b"pageNo=9223372036854775807&pageSize=10000\n",
        b"serviceName=a&protectThreshold=NaN\n",
    ] {
        fuzzing::http_params(input);
    }
}

fn payload(kind: &str, body: &str) -> Vec<u8> {
    nacelle_wire::payload::seal(kind, body.as_bytes().to_vec()).encode_to_vec()
}

/// Inputs the fuzzer found or would take a while to build.
#[test]
fn hostile_payloads_keep_the_properties() {
    for input in [
        Vec::new(),
        // grpc_payload crash-7beb63a5: a group ending with '@' (grouped name `G@@@orders`).
        payload(
            "InstanceRequest",
            r#"{"serviceName":"orders","groupName":"DEFAULT_GROU@","type":"deregisterInstance","instance":{"ip":"10.0.0.9","port":8080,"clusterName":""}}"#,
        ),
        payload(
            "InstanceRequest",
            r#"{"serviceName":"@x","type":"registerInstance","instance":{"ip":"a\"b","port":1,"metadata":{"k":"\u0000"}}}"#,
        ),
        payload(
            "BatchInstanceRequest",
            r#"{"serviceName":"x","type":"batchRegisterInstance","instances":[]}"#,
        ),
        payload(
            "ServiceListRequest",
            r#"{"pageNo":-9223372036854775808,"pageSize":9223372036854775807}"#,
        ),
        payload(
            "ServiceQueryRequest",
            r#"{"serviceName":"x","cluster":"\"\\\u2028"}"#,
        ),
        payload("Nope\"\\Request", "{"),
        payload("ConnectionSetupRequest", r#"{"labels":{"a":1}}"#),
    ] {
        fuzzing::grpc_payload(&input);
    }
}
