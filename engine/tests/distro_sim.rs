//! The Distro simulator (see `sim/mod.rs`): many seeds of a faulty cluster, each checked
//! against the invariants of `DISTRO.md`.
//!
//! - `DISTRO_SEEDS=<n>` sets how many seeds the sweep runs (default 200; CI runs the default);
//! - `DISTRO_SEED=<n>` replays one seed with a log of every fault.

extern crate nacelle_engine as engine;

mod sim;

use sim::{run_seed, Scenario};

fn report(seed: u64, violations: &[String], log: &[String]) -> String {
    format!(
        "seed {seed} failed; replay with DISTRO_SEED={seed} cargo test --release -p nacelle-engine --test distro_sim -- --nocapture\n{}\nlast events:\n{}",
        violations.join("\n"),
        log[log.len().saturating_sub(40)..].join("\n")
    )
}

#[test]
fn random_faults_never_break_an_invariant() {
    if let Ok(seed) = std::env::var("DISTRO_SEED") {
        let seed: u64 = seed.parse().expect("DISTRO_SEED is a number");
        let (violations, world) = run_seed(seed, Scenario::standard(), true);
        eprintln!("{}", world.summary());
        assert!(
            violations.is_empty(),
            "{}",
            report(seed, &violations, &world.log)
        );
        return;
    }
    let seeds: u64 = std::env::var("DISTRO_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut failures = Vec::new();
    for seed in 0..seeds {
        let (violations, world) = run_seed(seed, Scenario::standard(), false);
        if !violations.is_empty() {
            failures.push(report(seed, &violations, &world.log));
            if failures.len() >= 3 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_calm_cluster_converges_and_verifies_with_digests_only() {
    let scenario = Scenario {
        faults: false,
        ..Scenario::standard()
    };
    let (violations, world) = run_seed(7, scenario, false);
    assert!(
        violations.is_empty(),
        "{}",
        report(7, &violations, &world.log)
    );
}
