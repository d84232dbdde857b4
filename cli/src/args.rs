//! The command line: global flags, commands and their arguments (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use cairn_api::groups::GroupRole;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: launch personal Jupyter and RStudio environments, and run the service",
    after_help = "The controller's URL and the token come from --url/--token, else CAIRN_URL/CAIRN_TOKEN, \
                  else the config file written by `cairn login`; the URL defaults to http://127.0.0.1:7080.\n\
                  Exit codes: 0 ok, 1 other failure, 2 bad usage, 3 not logged in, 4 forbidden, \
                  5 not found, 6 conflict or limit reached, 7 invalid input, 69 controller unreachable."
)]
pub struct Cli {
    /// The controller's URL [env: CAIRN_URL] [default: http://127.0.0.1:7080].
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API token to use instead of the saved one [env: CAIRN_TOKEN].
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print the API's JSON answer (pretty) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Config file [env: CAIRN_CONFIG] [default: $XDG_CONFIG_HOME/cairn/config.toml or
    /// ~/.config/cairn/config.toml].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in with a user name and password; saves the URL and a token in the config file.
    Login {
        /// User name (asked for on a terminal if not given).
        #[arg(long, short)]
        user: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Revoke the saved token and remove it from the config file.
    Logout,
    /// Show who the token belongs to.
    Whoami,
    /// List and manage blueprints (creating and editing needs an admin).
    #[command(visible_alias = "bp")]
    Blueprints {
        #[command(subcommand)]
        command: Option<BlueprintsCommand>,
    },
    /// Launch an instance of a blueprint.
    Launch {
        /// The blueprint's name.
        blueprint: String,
        /// The volume to restore and save, for a blueprint that keeps files
        /// (default: the one named after the blueprint).
        #[arg(long)]
        volume: Option<String>,
        /// Wait until the instance is running (or has failed), showing its progress.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 90s, 10m.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// List instances: your own, everyone's with --all (admins), or those launched
    /// through a group with --group (its managers).
    Ps {
        /// Everyone's instances (admins only).
        #[arg(long, short)]
        all: bool,
        /// The instances of this group's members (managers).
        #[arg(long, short, conflicts_with = "all")]
        group: Option<String>,
    },
    /// Stop an instance.
    Stop {
        /// The instance's id (i-...).
        id: String,
    },
    /// Print an instance's logs.
    Logs {
        /// The instance's id (i-...).
        id: String,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
    },
    /// List the hosts, or drain, undrain and remove one (admins).
    Hosts {
        #[command(subcommand)]
        command: Option<HostsCommand>,
    },
    /// Push `docker save` archives to the controller, list and remove them (admins).
    Images {
        #[command(subcommand)]
        command: Option<ImagesCommand>,
    },
    /// Push datasets (directories of course material) to the controller; list,
    /// show and remove them. Listing is for everyone, pushing and removing for admins.
    Datasets {
        #[command(subcommand)]
        command: Option<DatasetsCommand>,
    },
    /// Your persistent volumes: list them, look at their snapshots, restore an
    /// older snapshot, download one as a tar, delete a volume.
    #[command(visible_alias = "vol")]
    Volumes {
        #[command(subcommand)]
        command: Option<VolumesCommand>,
    },
    /// Your groups (courses); managers manage people, join codes and usage.
    #[command(visible_alias = "group")]
    Groups {
        #[command(subcommand)]
        command: Option<GroupsCommand>,
    },
    /// Join a group with the code your teacher gave you.
    Join { code: String },
    /// Sign up for an account, where the site takes sign-ups; it may wait for
    /// approval. The password is asked for, or read with --password-stdin.
    Register {
        name: String,
        #[arg(long)]
        email: String,
        /// Your course's join code: its teachers can approve you, and you join it.
        #[arg(long)]
        code: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// What you have used (credits, instances); --group for a group's (managers),
    /// --csv for everyone's (admins).
    Usage {
        #[arg(long, short)]
        group: Option<String>,
        #[arg(long, conflicts_with = "group")]
        csv: bool,
    },
    /// The audit log: admin, manager and login actions (admins).
    Audit {
        /// How many entries, newest first.
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: usize,
    },
    /// List and manage user accounts (admins).
    Users {
        #[command(subcommand)]
        command: Option<UsersCommand>,
    },
    /// Print a shell completion script, e.g. `cairn completions bash > /etc/bash_completion.d/cairn`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum BlueprintsCommand {
    /// List blueprints (the default).
    Ls,
    /// Show one blueprint.
    Show { name: String },
    /// Create a blueprint from a .toml or .json file (`-` reads standard input).
    Create {
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// Replace a blueprint's fields from a file, as a new revision.
    Edit {
        name: String,
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// Hide a blueprint from users; running instances are not touched.
    Disable { name: String },
    /// Offer a disabled blueprint to users again.
    Enable { name: String },
    /// Show a blueprint's revisions.
    History { name: String },
    /// Resolve a blueprint's image tag again; if it now points at a new digest,
    /// that is a new revision (running instances keep theirs).
    Refresh { name: String },
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// List hosts with their state, standing and capacity (the default).
    Ls,
    /// Stop placing on a host; running instances finish, or are stopped at the deadline.
    Drain {
        /// The host's id (h-...).
        id: String,
        /// Stop what still runs after this long, e.g. `30m` or `2h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<std::time::Duration>,
    },
    /// Open a draining or drained host again.
    Undrain {
        /// The host's id (h-...).
        id: String,
    },
    /// Remove a drained host from the pool; its agent is refused from then on.
    Remove {
        /// The host's id (h-...).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List the images pushed to the controller (the default).
    Ls,
    /// Upload an image archive made with `docker save NAME:TAG -o FILE.tar`; hosts
    /// fetch it from the controller, no registry needed. An interrupted push resumes
    /// when run again.
    Push {
        /// The archive (an uncompressed tar from `docker save`).
        file: PathBuf,
    },
    /// Remove a pushed image (refused while an enabled blueprint uses it).
    Rm {
        /// The archive's hash (or a unique prefix of it), or a tag it carries.
        archive: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatasetsCommand {
    /// List datasets with their latest version (the default).
    Ls,
    /// Show a dataset's versions.
    Show { name: String },
    /// Push a directory as the next version of a dataset. Only chunks the controller
    /// lacks are sent; pushing an unchanged directory creates no version.
    Push {
        /// The dataset's name (1-63 of a-z, 0-9, '-').
        name: String,
        /// The directory to push.
        dir: PathBuf,
    },
    /// Remove a dataset (NAME) or one version of it (NAME@3).
    Rm {
        /// NAME or NAME@VERSION.
        dataset: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumesCommand {
    /// List your volumes (the default).
    Ls,
    /// A volume's snapshots, newest first: the head, older saves, conflicts and
    /// halted saves waiting for a decision.
    Snapshots { name: String },
    /// Make a snapshot the head: the next launch restores it (refused while an
    /// instance writes the volume).
    Restore { name: String, snapshot: u64 },
    /// Write a snapshot's files as a tar archive.
    Download {
        name: String,
        snapshot: u64,
        /// Where to write it (default: NAME-SNAPSHOT.tar).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Delete a volume with every snapshot (needs --yes).
    Rm {
        name: String,
        /// Confirm: the files are gone for good.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Your groups (the default; admins see all).
    Ls,
    /// One group: its quotas, limits, and (for managers) its people.
    Show { name: String },
    /// Create a group (admins).
    Create {
        name: String,
        /// The account that runs it (a teacher).
        #[arg(long)]
        owner: String,
        #[arg(long)]
        title: Option<String>,
    },
    /// Change fields: title, expires_ms, idle_timeout_secs (owners); quota,
    /// member_quota, limits, granted, owner (admins). Values are JSON or text,
    /// e.g. `quota={"instances":30,"credits":100}`.
    Set {
        name: String,
        #[arg(required = true, value_name = "FIELD=VALUE")]
        fields: Vec<String>,
    },
    /// Add a member, or change someone's role (managers).
    Add {
        name: String,
        user: String,
        #[arg(long, default_value = "member", value_parser = parse_role)]
        role: GroupRole,
    },
    /// Remove a member (managers); their running instances of the group stop.
    Rm { name: String, user: String },
    /// Leave a group; your running instances of it stop.
    Leave { name: String },
    /// Show the group's join code, or make a new one with --new (the old one
    /// stops working).
    Code {
        name: String,
        #[arg(long)]
        new: bool,
        /// How long a new code is valid, e.g. 7d, 12h.
        #[arg(long, value_parser = humantime::parse_duration, requires = "new")]
        valid: Option<Duration>,
        /// How many people may use a new code.
        #[arg(long, requires = "new")]
        max_uses: Option<u32>,
    },
}

fn parse_role(s: &str) -> Result<GroupRole, String> {
    GroupRole::parse(s).ok_or_else(|| format!("{s:?}: member, manager or owner"))
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List accounts (the default).
    Ls,
    /// Create an account; the password is asked for, or read with --password-stdin.
    Create {
        name: String,
        /// Make the account an administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account: it can no longer log in, and its tokens stop working.
    Disable { name: String },
    /// Enable a disabled account.
    Enable { name: String },
    /// Lift the delay or lock-out that failed logins put on an account.
    Unlock { name: String },
    /// Sign-ups waiting for your approval (admins: all; managers: their groups').
    Pending,
    /// Approve a sign-up: the account may log in.
    Approve { name: String },
    /// Reject a sign-up: the account goes.
    Reject { name: String },
    /// Set when an account stops working (admins): `--in 90d`, or `--never`.
    Expire {
        name: String,
        #[arg(long = "in", value_parser = humantime::parse_duration, conflicts_with = "never", required_unless_present = "never")]
        after: Option<std::time::Duration>,
        #[arg(long)]
        never: bool,
    },
    /// Ask for an account's deletion with its files, after the site's grace
    /// period (your own, or anyone's as an admin); --cancel withdraws it.
    Delete {
        name: String,
        #[arg(long)]
        cancel: bool,
        /// Confirm: the account's volumes go with it.
        #[arg(long, required_unless_present = "cancel")]
        yes: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere_and_subcommands_default() {
        let cli =
            Cli::try_parse_from(["cairn", "blueprints", "--json", "--url", "http://h:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.url.as_deref(), Some("http://h:1"));
        assert!(matches!(cli.command, Command::Blueprints { command: None }));
        let cli = Cli::try_parse_from(["cairn", "launch", "python", "--wait", "--timeout", "90s"])
            .unwrap();
        match cli.command {
            Command::Launch {
                blueprint,
                wait,
                timeout,
                ..
            } => {
                assert_eq!(blueprint, "python");
                assert!(wait);
                assert_eq!(timeout, Duration::from_secs(90));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["cairn", "images", "push", "img.tar"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Images { command: Some(ImagesCommand::Push { ref file }) } if file == std::path::Path::new("img.tar")
        ));
        let cli = Cli::try_parse_from(["cairn", "images"]).unwrap();
        assert!(matches!(cli.command, Command::Images { command: None }));
        let e = Cli::try_parse_from(["cairn", "frobnicate"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
