//! `cairn`, the command-line client of Cairn, as a library: the binary in `main.rs`
//! only parses the command line, runs [`run`] and turns its error into a message and
//! an exit code.
//!
//! * [`args`] — the command line (clap).
//! * [`config`] — where the URL and token come from; the config file `login` writes.
//! * [`client`] — the HTTP client over the REST API; answers are read into the API
//!   model's types (`cairn_api`).
//! * [`output`] — tables, human units, and `--json`.
//! * [`commands`] — one module per command group.
//! * [`upload`] — sending the chunks a push's manifest lists that the controller
//!   lacks, in packs (images, datasets).
//! * [`error`] — failures, their one-line messages, and the exit-code mapping.
#![forbid(unsafe_code)]

pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;
pub mod upload;

pub use args::Cli;
pub use commands::run;
pub use error::Error;
