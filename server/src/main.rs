//! `nacelle`: the server binary. It parses the command line and runs the `nacelle_server`
//! library (see its crate docs for the layout); `nacelle certs ...` creates the cluster's
//! certificates instead.

use clap::Parser;
use nacelle_server::{certs, config};
use tracing::error;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NACELLE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("certs") {
        // `nacelle certs ...`: create the cluster CA and node certificates, then exit.
        match certs::run(&argv[2..]) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("nacelle certs: {e}");
                std::process::exit(2);
            }
        }
    }
    let cfg = match config::Args::parse().resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nacelle: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = nacelle_server::run(cfg) {
        error!("{e}");
        std::process::exit(1);
    }
}
