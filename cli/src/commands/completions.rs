//! `cairn completions SHELL`: prints a completion script generated from the command
//! line's definition.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::Cli;
use crate::error::Error;
use crate::output;

pub fn run(shell: Shell) -> Result<(), Error> {
    output::print(&script(shell))
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = script(shell);
            assert!(s.contains("cairn"), "{shell}");
            assert!(s.contains("blueprints"), "{shell}");
        }
    }
}
