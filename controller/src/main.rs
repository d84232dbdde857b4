//! `cairn-controller`: see `cairn-controller --help`.

use std::process::ExitCode;

use cairn_controller::cli::{self, Cli};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn_shared::process::init_logging();
    match cli::dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
