//! The `herald` binary: parse the configuration, set up logging, bind, serve until SIGTERM or SIGINT; or run
//! one of the command-line tools (`herald token|publish|tail`, in [`herald::cli`]).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use herald::config::{Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGTERM and SIGINT handlers now, so that a signal arriving at any time after start-up (even
/// before the listener is announced) shuts down gracefully; the returned future completes on the first signal,
/// and a second one exits at once.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; serving until killed");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        });
    }
}

fn main() -> ExitCode {
    // A tool's command line is read without the serve flags, so that its `--help` shows its own flags only.
    if let Some(tool) = herald::cli::from_args(std::env::args_os()) {
        return herald::cli::run(tool);
    }
    let config = Config::parse();
    if let Some(Command::Tool(tool)) = config.command {
        return herald::cli::run(tool);
    }
    init_tracing(config.log_format);
    if let Err(e) = config.validate() {
        tracing::error!("{e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(cause = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Before binding: once the address is announced, a signal must already mean "shut down gracefully".
        let shutdown = shutdown_signal();
        let listener = match herald::server::bind(config.listen) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %config.listen, cause = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match herald::serve(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(cause = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
