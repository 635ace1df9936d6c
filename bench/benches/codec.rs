//! The Nacos codecs on the request path: parsing an `InstanceRequest` body, writing the
//! `ServiceInfo` answer of a 100-instance service (uncached, as on a view's first read), and the
//! protobuf `Payload` envelope around a JSON body.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::{InstanceSpec, Interner, Metadata, ServiceKey, ServiceView};
use prost::Message;
use wire::naming::NamingRequest;
use wire::service_info::{encode, NameStyle, Query};

const REGISTER: &[u8] = br#"{"headers":{},"namespace":"public","serviceName":"demo","groupName":"DEFAULT_GROUP","type":"registerInstance","instance":{"instanceId":"","ip":"10.0.0.9","port":8080,"weight":1.0,"healthy":true,"enabled":true,"ephemeral":true,"clusterName":"DEFAULT","serviceName":"","metadata":{"zone":"z1","ver":"1.0"}},"module":"naming"}"#;

fn view_of(n: usize) -> ServiceView {
    let key = ServiceKey::new("public", "DEFAULT_GROUP", "demo").expect("valid key");
    let mut interner = Interner::default();
    let publishes = (0..n)
        .map(|i| {
            let spec = InstanceSpec {
                ip: format!("10.0.{}.{}", i / 256, i % 256),
                port: 8080,
                metadata: Metadata::from_pairs([("zone", "z1"), ("ver", "1.0")]).expect("metadata"),
                ..Default::default()
            };
            Arc::from(vec![spec.build(&mut interner).expect("valid instance")])
        })
        .collect();
    ServiceView::new(
        key,
        1,
        1_700_000_000_000,
        0.0,
        Metadata::default(),
        publishes,
        None,
    )
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    g.bench_function("parse InstanceRequest + build instance", |b| {
        let mut interner = Interner::default();
        b.iter(|| {
            let req = NamingRequest::parse(black_box(REGISTER)).expect("parses");
            let key = req.service_key().expect("key");
            let inst = req
                .instance
                .expect("instance")
                .into_spec()
                .expect("spec")
                .build(&mut interner)
                .expect("valid");
            black_box((key, inst))
        })
    });
    let view = view_of(100);
    g.bench_function("encode ServiceInfo, 100 instances", |b| {
        let q = Query {
            clusters: "",
            healthy_only: false,
        };
        b.iter(|| black_box(encode(&view.key, Some(&view), NameStyle::Bare, q, 0)))
    });
    let body = encode(
        &view.key,
        Some(&view),
        NameStyle::Bare,
        Query {
            clusters: "",
            healthy_only: false,
        },
        0,
    );
    g.bench_function("Payload encode+decode, 100-instance answer", |b| {
        b.iter(|| {
            let p = wire::payload::seal("QueryServiceResponse", black_box(body.clone()));
            let bytes = p.encode_to_vec();
            let back = wire::proto::Payload::decode(bytes.as_slice()).expect("decodes");
            black_box(back)
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
