//! # loadgen
//!
//! A Nacos 2.x load generator. It speaks the real client protocol (gRPC `Request` /
//! `BiRequestStream` with the JSON `Payload` envelope, and the HTTP v1 OpenAPI), so the same
//! run works against Nacelle, r-nacos and Nacos.
//!
//! ```text
//! loadgen register  --targets 127.0.0.1:8848 --instances 500000 --connections 1000 --services 5000 --report r.json
//! loadgen query     --targets 127.0.0.1:8848 --rate 5000 --duration 30 --prepare
//! loadgen subscribe --targets 127.0.0.1:8848 --services 10 --subscribers 5 --rate 100
//! loadgen churn     --targets 127.0.0.1:8848 --rate 500 --duration 60
//! loadgen converge  --targets 10.0.0.1:8848,10.0.0.2:8848,10.0.0.3:8848
//! loadgen flood     --targets 127.0.0.1:8848 --rate 60000 --duration 15 --prepare
//! loadgen flood     --targets 127.0.0.1:8848 --rate 20000 --duration 15 --prepare --protocol http
//! ```
//!
//! Every gRPC connection does the SDK handshake: unary `ServerCheckRequest`, then the
//! bi-stream with `ConnectionSetupRequest{clientVersion:"Nacelle-Loadgen:0.1",
//! labels:{source:sdk,module:naming}, abilityTable:{}}`, waiting for `SetupAckRequest` when the
//! server announced ability negotiation (100 ms otherwise). It answers server requests on the
//! stream (`NotifySubscriberRequest`, `ClientDetectionRequest`, `ConnectResetRequest`) and
//! sends `HealthCheckRequest` when idle for 5 s, so connections (and their instances) live as
//! long as the run wants them to. Two clients do this: tonic's ([`grpc`], for every scenario)
//! and a raw `h2` one ([`raw`], for `flood` and, by default, `register`: `--client tonic` picks
//! the other). The raw one costs the generator about half the CPU per call, which is what lets
//! one generator core saturate one server core; it sends no idle health checks (its
//! connections answer the server's detection requests instead).
//!
//! Latencies are kept in HDR histograms (µs). Open-loop scenarios (`query`, the writers of
//! `subscribe`/`converge`, `churn`) measure from the *intended* send time, so a slow server
//! is not hidden by coordinated omission.
//!
//! # Layout
//! - `main.rs`: runtime setup (RLIMIT_NOFILE raised to the hard limit), dispatch, report output.
//! - [`cli`]: the clap command line (every scenario and flag is documented in `--help`).
//! - [`grpc`]: one Nacos gRPC connection: handshake, unary requests with timeouts, the
//!   bi-stream reader answering server requests, push delivery, idle health checks.
//! - [`raw`]: a cheap gRPC client for `flood` and `register` (h2, pre-encoded requests, answers
//!   classified without decoding them).
//! - [`raw_http`]: the same for `flood --protocol http`: pipelined keep-alive HTTP/1.1 with
//!   pre-encoded `GET`s, answers parsed incrementally and classified by their status.
//! - [`http`]: a minimal keep-alive HTTP/1.1 client for the v1 OpenAPI.
//! - [`layout`]: target parsing, service/instance naming, the plan that spreads instances
//!   over services and connections (one publish per service per connection), request bodies.
//! - [`stats`]: latency recorders, error classification, the pacer and the JSON/human report.
//! - [`scenario`]: `register`, `query`, `subscribe` + `converge`, `churn`, `flood`.

mod cli;
mod grpc;
mod http;
mod layout;
mod raw;
mod raw_http;
mod scenario;
mod stats;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let nofile = raise_nofile_limit();
    let threads = cli.threads;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some((cur, max)) = nofile {
        if cur < 4096 {
            eprintln!("loadgen: warning: RLIMIT_NOFILE is {cur} (hard limit {max})");
        }
    }
    let report_path = cli.scenario.common().report.clone();
    let outcome = rt.block_on(scenario::run(cli.scenario));
    let code = match outcome {
        Ok(report) => {
            report.print_human();
            if let Some(path) = report_path {
                let text = match serde_json::to_string_pretty(&report.to_json()) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("loadgen: cannot encode the report: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                if let Err(e) = std::fs::write(&path, text + "\n") {
                    eprintln!("loadgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("report written to {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    };
    // Thousands of connections close faster without waiting for their tasks.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the resulting (soft, hard) pair.
#[allow(unsafe_code, clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
fn raise_nofile_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass by valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    Some((lim.rlim_cur as u64, lim.rlim_max as u64))
}
