//! The `sextant` binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sextant::config::ServeArgs;

/// Sextant: a Prometheus-compatible, replicated, simulation-tested time-series database.
///
/// Point Prometheus (or vmagent, Grafana Alloy, an OTel collector) at
/// http://127.0.0.1:9480/api/v1/write after `sextant serve`. Logs go to stderr; set RUST_LOG
/// (e.g. RUST_LOG=debug) to change the level.
#[derive(Parser, Debug)]
#[command(name = "sextant", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a single node: remote-write ingest, cardinality limits, the Prometheus query API,
    /// self-monitoring.
    ///
    /// With no flags it stores data in ./data and serves HTTP on 127.0.0.1:9480. SIGTERM or
    /// SIGINT shut it down cleanly: in-flight writes finish, the WAL is closed, no
    /// acknowledged write is lost.
    Serve(ServeArgs),
    /// Operate a cluster over gRPC: status, nodes, shard map, rules, dashboards, limits,
    /// blocked labels, cardinality, snapshots. Human tables by default, `--output json` for
    /// scripts; errors are one line on stderr and a non-zero exit code.
    Admin(sextant::admin::cli::AdminArgs),
    /// Load generator: send node_exporter-shaped Remote-Write 1.0 data (seeded) to any URL and
    /// report accepted samples/s, request latency, refusals and freshness (JSON on stdout, a
    /// summary line on stderr). Used by ci/bench-peers.
    BenchWrite(sextant::bench_write::BenchWriteArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Admin(args) => admin(args),
        Command::BenchWrite(args) => bench_write(args),
    }
}

#[cfg(not(madsim))]
fn bench_write(args: sextant::bench_write::BenchWriteArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sextant bench-write: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sextant::bench_write::run(&args)) {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report).expect("JSON serializes"));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sextant bench-write: {error}");
            ExitCode::from(2)
        }
    }
}

#[cfg(madsim)]
fn bench_write(_args: sextant::bench_write::BenchWriteArgs) -> ExitCode {
    eprintln!("sextant: this binary was built with --cfg madsim; run bench-write from a normal build");
    ExitCode::FAILURE
}

#[cfg(not(madsim))]
fn admin(args: sextant::admin::cli::AdminArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sextant admin: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sextant::admin::cli::run(&args)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(sextant::admin::cli::CliError::Found { output, message }) => {
            print!("{output}");
            eprintln!("sextant admin: {message}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("sextant admin: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(madsim)]
fn admin(_args: sextant::admin::cli::AdminArgs) -> ExitCode {
    eprintln!("sextant: this binary was built with --cfg madsim; run the admin CLI from a normal build");
    ExitCode::FAILURE
}

#[cfg(not(madsim))]
fn serve(args: ServeArgs) -> ExitCode {
    use sextant::config::ServeConfig;
    use tracing_subscriber::EnvFilter;

    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let file_text = match &args.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error) => {
                eprintln!("sextant: --config {path:?}: {error}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let config = match ServeConfig::resolve(&args, file_text.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sextant: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sextant: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sextant::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("sextant: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(madsim)]
fn serve(_args: ServeArgs) -> ExitCode {
    eprintln!("sextant: this binary was built with --cfg madsim; the simulator runs nodes through sextant-sim");
    ExitCode::FAILURE
}
