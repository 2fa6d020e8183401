//! The command-line tools: `herald token`, `herald publish` and `herald tail` (API.md, "Command-line tools").
//!
//! - [`token`] signs a JWT with the key a server is configured with, for development and scripts.
//! - [`publish`] sends one event to `POST /publish` and prints its id.
//! - [`tail`] prints a stream's events as they arrive, reconnecting and resuming with its last id the way
//!   a browser does.
//!
//! The tools have their own flags, not the server's: [`from_args`] parses a command line whose first
//! argument names a tool with [`Tools`], which knows nothing of the serve flags, so that
//! `herald tail --help` lists only what `tail` reads. The same subcommands are also declared in
//! [`crate::config::Command`] so that `herald --help` lists them.
//!
//! Every tool flag also reads `HERALD_` plus its name in capitals, like the server's flags
//! (`--token` ↔ `HERALD_TOKEN`, `--url` ↔ `HERALD_URL`). Exit status: 0 on success, 1 when the work failed
//! (the server refused, the network failed), 2 when the command line cannot be used (a bad `--ttl`, no key).

pub mod publish;
pub mod tail;
pub mod token;

mod client;
mod event_stream;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The server a tool talks to when `--url` is not given: `herald serve`'s default `--listen`.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The tools' command line, without the server's flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about = "Herald's command-line tools", subcommand_required = true)]
pub struct Tools {
    /// The tool to run.
    #[command(subcommand)]
    pub tool: Tool,
}

/// One of the command-line tools.
#[derive(Debug, Clone, Subcommand)]
pub enum Tool {
    /// Print a token signed with the server's key (--jwt-secret or --jwt-private-key), for development.
    Token(token::TokenArgs),
    /// Publish one event and print its id.
    Publish(publish::PublishArgs),
    /// Print a stream's events as they arrive, resuming with the last id across disconnects.
    Tail(tail::TailArgs),
}

impl Tool {
    fn name(&self) -> &'static str {
        match self {
            Tool::Token(_) => "token",
            Tool::Publish(_) => "publish",
            Tool::Tail(_) => "tail",
        }
    }
}

/// The names of the tools, as their subcommands are spelled.
const TOOL_NAMES: [&str; 3] = ["token", "publish", "tail"];

/// Parses `args` (the program name first) as a tool's command line when its first argument names a tool
/// (or is `help` followed by one); `None` for anything else, which is the server's command line.
///
/// Exits the process, as clap does, on `--help`, `--version` and usage errors (status 2).
pub fn from_args<I>(args: I) -> Option<Tool>
where
    I: IntoIterator<Item = OsString>,
{
    let args: Vec<OsString> = args.into_iter().collect();
    let names_tool = |i: usize| args.get(i).and_then(|a| a.to_str()).is_some_and(|a| TOOL_NAMES.contains(&a));
    let first = args.get(1).and_then(|a| a.to_str());
    if names_tool(1) || (first == Some("help") && names_tool(2)) {
        Some(Tools::parse_from(args).tool)
    } else {
        None
    }
}

/// How a tool failed: what to print on stderr and the exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    /// The command line cannot be used (exit status 2, as for clap's own usage errors).
    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure { status: 2, message: message.into() }
    }

    /// The work failed: the server refused, the network failed (exit status 1).
    pub(crate) fn failed(message: impl Into<String>) -> Failure {
        Failure { status: 1, message: message.into() }
    }
}

/// Runs a tool to its end and returns the process's exit status; failures are printed on stderr as
/// `herald TOOL: message`.
pub fn run(tool: Tool) -> ExitCode {
    let name = tool.name();
    let result = match tool {
        Tool::Token(args) => token::run(&args),
        Tool::Publish(args) => block_on(publish::run(args)),
        Tool::Tail(args) => block_on(tail::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("herald {name}: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

/// Runs a networked tool on a single-threaded runtime: one connection at a time needs no more.
fn block_on(tool: impl std::future::Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(tool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn command_lines_are_well_formed() {
        Tools::command().debug_assert();
        crate::config::Config::command().debug_assert();
    }

    #[test]
    fn only_tool_names_are_taken() {
        assert!(from_args(args("herald")).is_none());
        assert!(from_args(args("herald serve --listen 127.0.0.1:0")).is_none());
        assert!(from_args(args("herald --listen 127.0.0.1:0")).is_none());
        assert!(from_args(args("herald help")).is_none());
        assert!(from_args(args("herald help serve")).is_none());
        assert!(matches!(from_args(args("herald token --jwt-secret s --subscribe a")), Some(Tool::Token(_))));
        assert!(matches!(from_args(args("herald publish a b")), Some(Tool::Publish(_))));
        assert!(matches!(from_args(args("herald tail a")), Some(Tool::Tail(_))));
    }

    #[test]
    fn the_server_command_line_knows_the_tools_too() {
        let config = crate::config::Config::try_parse_from(args("herald tail a,b")).expect("parses");
        assert!(matches!(config.command, Some(crate::config::Command::Tool(Tool::Tail(_)))));
    }
}
