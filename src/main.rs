use clap::Parser;
use keyward::cli::{Cli, Command};
use keyward::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;

/// Lines the log writer holds for its thread before it drops new ones (counted in
/// `keyward_log_lines_dropped`): a stderr that is slower than the lines come (a full
/// pipe, a slow terminal) must cost requests nothing.
const LOG_BUFFERED_LINES: usize = 65_536;

/// Sets up the log: lines are formatted where they happen and written to stderr by a
/// thread of their own, so a request never waits on a write. The guard flushes what is
/// buffered when it is dropped.
fn init_tracing(cli: &Cli) -> tracing_appender::non_blocking::WorkerGuard {
    // `serve` also reads `log` and `log_format` from the config file. A wrong value is
    // reported by `run`, which resolves the config again.
    let resolved = match &cli.command {
        Command::Serve(s) => Config::resolve(&cli.global, s).ok(),
        _ => None,
    };
    let (log, json) = match resolved {
        Some(c) => (c.log, c.log_format == LogFormat::Json),
        None => (
            cli.global.log.clone().unwrap_or_else(|| "info".to_owned()),
            cli.global.log_format.as_deref() == Some("json"),
        ),
    };
    let filter = EnvFilter::try_new(&log).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFERED_LINES)
        .thread_name("keyward-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    keyward::metrics::count_log_drops(move || dropped.dropped_lines() as u64);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    if json {
        // The span's fields (the request id) go on every line written inside it.
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
    guard
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    keyward::http::panic::install_hook();
    // A CLI report should not be buried in service logs.
    let log = (matches!(cli.command, Command::Serve(_)) || cli.global.log.is_some())
        .then(|| init_tracing(&cli));
    let code = match keyward::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    // `exit` runs no destructors: write out the buffered log lines first.
    drop(log);
    std::process::exit(code);
}
