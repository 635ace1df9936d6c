//! The exact commands a standalone shard emits for a subscribe, a registration and the push
//! that follows: `Command` compares whole (`PartialEq`), so a stray or missing command fails.
#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

use engine::{
    ClientId, ClientOp, Command, InstanceSpec, Interner, Now, OpOutcome, ReadIndex, ReplyTo,
    ServiceKey, Shard, ShardConfig, ShardMsg,
};

fn drain(shard: &mut Shard) -> Vec<Command> {
    std::iter::from_fn(|| shard.poll_command()).collect()
}

#[test]
fn a_subscribe_and_a_registration_emit_two_replies_then_one_push_of_the_published_view() {
    let cfg = ShardConfig::default();
    let index = ReadIndex::new(cfg.shard_count, 1 << 20);
    let at = |mono_ms| Now {
        mono_ms,
        unix_ms: 1_700_000_000_000 + mono_ms,
    };
    let mut shard = Shard::new(0, cfg.clone(), index.clone(), at(0));
    let service = ServiceKey::new("", "", "orders").unwrap();
    let instance = InstanceSpec {
        ip: "10.0.0.1".into(),
        port: 8080,
        ..InstanceSpec::default()
    }
    .build(&mut Interner::default())
    .unwrap();
    let client = ClientId::Conn(7);
    let reply = |token| Some(ReplyTo { shard: 0, token });

    shard.handle(
        at(0),
        ShardMsg::Client {
            client: client.clone(),
            op: ClientOp::Subscribe {
                service: service.clone(),
                clusters: "".into(),
            },
            reply: reply(1),
        },
    );
    shard.handle(
        at(0),
        ShardMsg::Client {
            client,
            op: ClientOp::Register {
                service: service.clone(),
                instance,
            },
            reply: reply(2),
        },
    );
    // Replies wait for the flush that publishes their effect.
    assert_eq!(drain(&mut shard), vec![]);
    shard.flush(at(0));
    assert_eq!(
        drain(&mut shard),
        vec![
            Command::Reply {
                to: ReplyTo { shard: 0, token: 1 },
                result: Ok(OpOutcome::Changed),
            },
            Command::Reply {
                to: ReplyTo { shard: 0, token: 2 },
                result: Ok(OpOutcome::Changed),
            },
        ]
    );

    // The push waits `push_delay_ms`, then carries the view the index publishes.
    shard.handle_timeout(at(cfg.push_delay_ms - 1));
    assert_eq!(drain(&mut shard), vec![]);
    shard.handle_timeout(at(cfg.push_delay_ms));
    let view = index.view(&service).unwrap();
    assert_eq!(view.instance_count, 1);
    assert_eq!(
        drain(&mut shard),
        vec![Command::Push {
            subscriber: 7,
            clusters: "".into(),
            view,
        }]
    );
}
