//! Stable-Rust mirror of the `auth_credentials` and `auth_token` fuzz targets (`fuzz/`,
//! nightly): the same properties (`nacelle_wire::fuzzing_auth`) over the seeds, the checked-in
//! corpus, seeded mutations of both and a few hostile inputs.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use nacelle_wire::fuzzing::Mutator;
use nacelle_wire::fuzzing_auth::{auth_credentials, auth_token, seeds};

fn property(target: &str) -> fn(&[u8]) {
    match target {
        "auth_credentials" => auth_credentials,
        _ => auth_token,
    }
}

#[test]
fn the_corpus_holds_the_seeds_and_the_properties() {
    for (target, name, bytes) in seeds() {
        property(target)(&bytes);
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
            .join(format!("seed-{name}"));
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            stored,
            bytes,
            "{} is not the current seed: regenerate it",
            path.display()
        );
    }
}

#[test]
fn mutated_inputs_keep_the_properties() {
    for target in ["auth_credentials", "auth_token"] {
        let corpus: Vec<Vec<u8>> = seeds()
            .into_iter()
            .filter(|(t, _, _)| *t == target)
            .map(|(_, _, b)| b)
            .collect();
        let mut rng = Mutator::new(17);
        for _ in 0..3_000 {
            property(target)(&rng.mutant(&corpus));
        }
    }
}

#[test]
fn hostile_inputs_keep_the_properties() {
    let long = "x".repeat(100_000);
    let hostile: Vec<Vec<u8>> = vec![
        vec![],
        b"\n\n\n".to_vec(),
        b"Bearer \n \n accessToken= \n".to_vec(),
        format!("Bearer {long}\n{long}\nusername={long}&password=x\n").into_bytes(),
        b"\xff\xfe\n\xc3\n%ff%fe=%c3\n{\"namespace\":1}".to_vec(),
        b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIiLCJleHAiOjF9.".to_vec(),
        long.clone().into_bytes(),
    ];
    for h in &hostile {
        auth_credentials(h);
        auth_token(h);
    }
}
