//! Asking for a user name or a password: on the terminal (passwords without echo), or
//! from the first line of standard input with `--password-stdin`.

use std::io::{BufRead, IsTerminal, Write};

use crate::error::Error;

/// Whether standard input is a terminal a person can answer prompts on.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// The first line of `r` without its line ending (`\n` or `\r\n`).
pub fn first_line(mut r: impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// The password on the first line of standard input.
pub fn password_from_stdin() -> Result<String, Error> {
    let p = first_line(std::io::stdin().lock())
        .map_err(Error::io("reading the password from standard input"))?;
    if p.is_empty() {
        return Err(Error::Input("no password on standard input".into()));
    }
    Ok(p)
}

/// Asks for a line on the terminal (shown as typed).
pub fn line(label: &str) -> Result<String, Error> {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{label}");
    let _ = err.flush();
    let v = first_line(std::io::stdin().lock()).map_err(Error::io("reading the terminal"))?;
    Ok(v.trim().to_string())
}

/// Asks for a password on the terminal, without echo.
pub fn password(label: &str) -> Result<String, Error> {
    rpassword::prompt_password(label).map_err(Error::io("reading the password"))
}

/// A password: from standard input with `--password-stdin`, else asked for on the
/// terminal (twice when `confirm`). Without a terminal it is a usage error.
pub fn get_password(from_stdin: bool, confirm: bool) -> Result<String, Error> {
    if from_stdin {
        return password_from_stdin();
    }
    if !interactive() {
        return Err(Error::Usage(
            "standard input is not a terminal to ask for the password on: pipe it in with --password-stdin".into(),
        ));
    }
    let p = password("Password: ")?;
    if p.is_empty() {
        return Err(Error::Input("empty password".into()));
    }
    if confirm && password("Password (again): ")? != p {
        return Err(Error::Input("the passwords do not match".into()));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_drops_only_the_line_ending() {
        assert_eq!(
            first_line(&b"s3cret pass \r\nmore"[..]).unwrap(),
            "s3cret pass "
        );
        assert_eq!(first_line(&b"pw\n"[..]).unwrap(), "pw");
        assert_eq!(first_line(&b"pw"[..]).unwrap(), "pw");
        assert_eq!(first_line(&b""[..]).unwrap(), "");
    }
}
