//! # nacelle-wire
//!
//! Bytes in and out of Nacelle: the Nacos gRPC `Payload` envelope (generated from
//! `schemas/nacos_grpc_service.proto`), the JSON bodies of the Nacos 2.x messages, and the
//! encoder of `ServiceInfo`, the answer to every query and push. Engine types never see a
//! protobuf or serde type; this crate converts at the edge and owns all generated code.
//!
//! # Layout
//! - [`proto`]: the generated prost messages and tonic services (regenerate with
//!   `wire/regen.sh`; the file is checked in so builds need no `protoc`).
//! - [`payload`]: `Payload` <-> (message type, JSON body), and response envelopes.
//! - [`naming`]: the JSON request bodies of the naming module and their conversion into
//!   engine instances.
//! - [`service_info`]: `ServiceInfo` JSON from a published view, cached per view.

#![deny(missing_docs)]

/// Generated from `schemas/nacos_grpc_service.proto`.
#[allow(missing_docs, non_camel_case_types, clippy::all, clippy::unwrap_used)]
pub mod proto {
    include!("generated/_.rs");
}

pub mod naming;
pub mod payload;
pub mod service_info;
