//! The `cutover` binary: parses, calls the libraries, prints. No logic of its own.

// The doc comments of the clap definitions are the terminal's help text ("[dns] name",
// "<plan>.proxy.json"), not rustdoc markup.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

/// `println!` that survives a closed stdout ([`output::write_out`]).
macro_rules! outln {
    () => {
        $crate::output::write_out(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*), true)
    };
}

/// `print!` that survives a closed stdout ([`output::write_out`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*), false)
    };
}

mod cli;
mod commands;
mod output;
mod progress;

use clap::Parser;

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 64,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let filter = match cli.global.verbose {
        0 => "warn",
        1 => "warn,cutover=info,cutover_pg=info,cutover_core=info",
        2 => "warn,cutover=debug,cutover_pg=debug,cutover_core=debug",
        _ => "debug",
    };
    output::set_quiet(cli.global.quiet);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUTOVER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(output::RedactingStderr);
    match cli.global.log_format {
        cli::LogFormat::Json => logs.json().init(),
        cli::LogFormat::Text => logs.with_ansi(output::color()).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(commands::run(cli));
    std::process::exit(code);
}
