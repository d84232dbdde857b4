//! `cairn`: parses the command line, runs the command, and reports a failure as one
//! line on stderr with the exit code of its kind (see `cairn_cli::error`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use cairn_cli::{error, Cli};
use clap::Parser;

fn main() -> ExitCode {
    // Bad usage exits here with clap's own message and code 2.
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(error::exit::OTHER);
        }
    };
    match rt.block_on(cairn_cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `cairn ps | head -1`: the reader has gone; nothing to say.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", error::report(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
