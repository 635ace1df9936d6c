//! Fuzzes the auth decoders: see `nacelle_wire::fuzzing_auth::auth_token` for the input format and
//! the properties (shared with the stable mirror `wire/tests/fuzz_auth.rs`); seeds in
//! `corpus/auth_token/` (`cargo run -p nacelle-wire --example fuzz_corpus_auth`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wire::fuzzing_auth::auth_token(data));
