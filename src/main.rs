use clap::Parser;
use keyward::cli::{Cli, Command};
use keyward::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;

fn init_tracing(cli: &Cli) {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
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
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    keyward::http::panic::install_hook();
    // A CLI report should not be buried in service logs.
    if matches!(cli.command, Command::Serve(_)) || cli.global.log.is_some() {
        init_tracing(&cli);
    }
    match keyward::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
