//! Runs a parsed command line: builds the context (config file, settings, client)
//! and hands over to the command group's module.
//!
//! * [`session`] — `login`, `logout`, `whoami`.
//! * [`blueprints`] — `blueprints ls|show|create|edit|disable|enable|history|refresh`.
//! * [`instances`] — `launch`, `ps`, `stop`, `logs`.
//! * [`hosts`] — `hosts`.
//! * [`images`] — `images ls|push|rm`: image archives pushed to the controller.
//! * [`datasets`] — `datasets ls|show|push|rm`: directories pushed as chunks.
//! * [`volumes`] — `volumes ls|snapshots|restore|download|rm`: users' kept files.
//! * [`groups`] — `groups …`, `join`, `usage`, `audit`.
//! * [`users`] — `users ls|create|disable|enable`.
//! * [`completions`] — `completions SHELL`.
//! * [`prompt`] — asking for user names and passwords.

pub mod blueprints;
pub mod completions;
pub mod datasets;
pub mod groups;
pub mod hosts;
pub mod images;
pub mod instances;
pub mod prompt;
pub mod session;
pub mod users;
pub mod volumes;

use std::path::PathBuf;

use serde_json::Value;

use crate::args::{
    BlueprintsCommand, Cli, Command, DatasetsCommand, GroupsCommand, HostsCommand, ImagesCommand,
    UsersCommand, VolumesCommand,
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
            volume,
            wait,
            timeout,
        } => instances::launch(&ctx, &blueprint, volume.as_deref(), wait.then_some(timeout)).await,
        Command::Ps { all, group } => instances::ps(&ctx, all, group.as_deref()).await,
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
        Command::Volumes { command } => match command.unwrap_or(VolumesCommand::Ls) {
            VolumesCommand::Ls => volumes::list(&ctx).await,
            VolumesCommand::Snapshots { name } => volumes::snapshots(&ctx, &name).await,
            VolumesCommand::Restore { name, snapshot } => {
                volumes::restore(&ctx, &name, snapshot).await
            }
            VolumesCommand::Download {
                name,
                snapshot,
                output,
            } => {
                let out = output.unwrap_or_else(|| format!("{name}-{snapshot}.tar").into());
                volumes::download(&ctx, &name, snapshot, &out).await
            }
            VolumesCommand::Rm { name, yes } => volumes::remove(&ctx, &name, yes).await,
        },
        Command::Groups { command } => match command.unwrap_or(GroupsCommand::Ls) {
            GroupsCommand::Ls => groups::list(&ctx).await,
            GroupsCommand::Show { name } => groups::show(&ctx, &name).await,
            GroupsCommand::Create { name, owner, title } => {
                groups::create(&ctx, &name, &owner, title).await
            }
            GroupsCommand::Set { name, fields } => groups::set(&ctx, &name, &fields).await,
            GroupsCommand::Add { name, user, role } => groups::add(&ctx, &name, &user, role).await,
            GroupsCommand::Rm { name, user } => groups::remove(&ctx, &name, &user).await,
            GroupsCommand::Leave { name } => {
                let me = session::whoami_name(&ctx).await?;
                groups::remove(&ctx, &name, &me).await
            }
            GroupsCommand::Code {
                name,
                new,
                valid,
                max_uses,
            } => groups::code(&ctx, &name, new, valid, max_uses).await,
        },
        Command::Join { code } => groups::join(&ctx, &code).await,
        Command::Register {
            name,
            email,
            code,
            password_stdin,
        } => users::register(&ctx, &name, &email, code, password_stdin).await,
        Command::Usage { group, csv } => groups::usage(&ctx, group.as_deref(), csv).await,
        Command::Audit { limit } => groups::audit(&ctx, limit).await,
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
            UsersCommand::Pending => users::pending(&ctx).await,
            UsersCommand::Approve { name } => users::decide(&ctx, &name, "approve").await,
            UsersCommand::Reject { name } => users::decide(&ctx, &name, "reject").await,
            UsersCommand::Expire { name, after, .. } => users::expire(&ctx, &name, after).await,
            UsersCommand::Delete { name, cancel, .. } => users::delete(&ctx, &name, cancel).await,
        },
        Command::Completions { .. } => Ok(()),
    }
}
