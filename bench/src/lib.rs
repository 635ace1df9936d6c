//! # bench
//!
//! Criterion benches of Nacelle's hot paths and a memory probe; nothing here ships.
//!
//! # Layout
//! - `benches/engine.rs`: one shard's register, deregister, query of a 100-instance service,
//!   and the flush that republishes a changed view (`cargo bench -p bench --bench engine`).
//! - `benches/codec.rs`: parsing an `InstanceRequest`, writing a 100-instance `ServiceInfo`,
//!   the protobuf `Payload` round trip (`cargo bench -p bench --bench codec`).
//! - `benches/peer_codec.rs`: the node-to-node flatbuffers codec — encode and decode of a
//!   512-upsert sync batch and a 2,000-client snapshot chunk (`cargo bench -p bench --bench
//!   peer_codec`).
//! - `src/bin/memory.rs`: RSS growth per instance of the engine alone at a million HTTP
//!   instances (`cargo run --release -p bench --bin memory`).
//!
//! The scripts that compare the whole server with r-nacos live in `perf/`.
