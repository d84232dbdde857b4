//! Runs a parsed command line: builds the context (config file, settings, client)
//! and hands over to the command group's module.
//!
//! * [`session`] — `login`, `logout`, `whoami`.
//! * [`blueprints`] — `blueprints ls|show|create|edit|disable|enable|history|refresh`.
//! * [`instances`] — `launch`, `ps`, `stop`, `logs`.
//! * [`hosts`] — `hosts`.
//! * [`images`] — `images ls|push|rm`: image archives pushed to the controller.
//! * [`datasets`] — `datasets ls|show|push|rm`: directories pushed as chunks.
//! * [`users`] — `users ls|create|disable|enable`.
//! * [`completions`] — `completions SHELL`.
//! * [`prompt`] — asking for user names and passwords.

pub mod blueprints;
pub mod completions;
pub mod datasets;
pub mod hosts;
pub mod images;
pub mod instances;
pub mod prompt;
pub mod session;
pub mod users;

use std::path::PathBuf;

use serde_json::Value;

use crate::args::{
    BlueprintsCommand, Cli, Command, DatasetsCommand, HostsCommand, ImagesCommand, UsersCommand,
};
use crate::client::Client;
use crate::config::{self, ConfigFile, Inputs, Settings};
use crate::error::Error;
use crate::output;

/// What every command runs with.
#[derive(Debug)]
pub struct Ctx {
    pub client: Client,
    /// `--json`: print the API's JSON instead of tables.
    pub json: bool,
    pub config_path: PathBuf,
    /// The config file as read at start.
    pub config: ConfigFile,
    pub settings: Settings,
}

impl Ctx {
    /// Prints the API's answer with `--json`, else the text `human` renders.
    pub fn emit(
        &self,
        v: &Value,
        human: impl FnOnce() -> Result<String, Error>,
    ) -> Result<(), Error> {
        if self.json {
            output::print(&output::json(v))
        } else {
            output::print(&human()?)
        }
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), Error> {
    // Needs neither a config file nor a controller.
    if let Command::Completions { shell } = cli.command {
        return completions::run(shell);
    }
    let config_path = config::config_path(cli.config.as_deref(), |k| std::env::var(k).ok())?;
    let file = config::load(&config_path)?;
    let settings = config::resolve(&Inputs::gather(cli.url, cli.token, file.clone()));
    let ctx = Ctx {
        client: Client::new(&settings)?,
        json: cli.json,
        config_path,
        config: file,
        settings,
    };
    match cli.command {
        Command::Login {
            user,
            password_stdin,
        } => session::login(&ctx, user, password_stdin).await,
        Command::Logout => session::logout(&ctx).await,
        Command::Whoami => session::whoami(&ctx).await,
        Command::Blueprints { command } => match command.unwrap_or(BlueprintsCommand::Ls) {
            BlueprintsCommand::Ls => blueprints::list(&ctx).await,
            BlueprintsCommand::Show { name } => blueprints::show(&ctx, &name).await,
            BlueprintsCommand::Create { file } => blueprints::create(&ctx, &file).await,
            BlueprintsCommand::Edit { name, file } => blueprints::edit(&ctx, &name, &file).await,
            BlueprintsCommand::Disable { name } => {
                blueprints::set_enabled(&ctx, &name, false).await
            }
            BlueprintsCommand::Enable { name } => blueprints::set_enabled(&ctx, &name, true).await,
            BlueprintsCommand::History { name } => blueprints::history(&ctx, &name).await,
            BlueprintsCommand::Refresh { name } => blueprints::refresh(&ctx, &name).await,
        },
        Command::Launch {
            blueprint,
            wait,
            timeout,
        } => instances::launch(&ctx, &blueprint, wait.then_some(timeout)).await,
        Command::Ps { all } => instances::ps(&ctx, all).await,
        Command::Stop { id } => instances::stop(&ctx, &id).await,
        Command::Logs { id, tail } => instances::logs(&ctx, &id, tail).await,
        Command::Hosts { command } => match command.unwrap_or(HostsCommand::Ls) {
            HostsCommand::Ls => hosts::list(&ctx).await,
            HostsCommand::Drain { id, deadline } => hosts::drain(&ctx, &id, deadline).await,
            HostsCommand::Undrain { id } => hosts::pool(&ctx, &id, "undrain").await,
            HostsCommand::Remove { id } => hosts::remove(&ctx, &id).await,
        },
        Command::Images { command } => match command.unwrap_or(ImagesCommand::Ls) {
            ImagesCommand::Ls => images::list(&ctx).await,
            ImagesCommand::Push { file } => images::push(&ctx, &file).await,
            ImagesCommand::Rm { archive } => images::remove(&ctx, &archive).await,
        },
        Command::Datasets { command } => match command.unwrap_or(DatasetsCommand::Ls) {
            DatasetsCommand::Ls => datasets::list(&ctx).await,
            DatasetsCommand::Show { name } => datasets::show(&ctx, &name).await,
            DatasetsCommand::Push { name, dir } => datasets::push(&ctx, &name, &dir).await,
            DatasetsCommand::Rm { dataset } => datasets::remove(&ctx, &dataset).await,
        },
        Command::Users { command } => match command.unwrap_or(UsersCommand::Ls) {
            UsersCommand::Ls => users::list(&ctx).await,
            UsersCommand::Create {
                name,
                admin,
                password_stdin,
            } => users::create(&ctx, &name, admin, password_stdin).await,
            UsersCommand::Disable { name } => users::set_disabled(&ctx, &name, true).await,
            UsersCommand::Enable { name } => users::set_disabled(&ctx, &name, false).await,
            UsersCommand::Unlock { name } => users::unlock(&ctx, &name).await,
        },
        Command::Completions { .. } => Ok(()),
    }
}
