//! Bounds checks for everything that crosses the link.
//!
//! A frame's size limit caps the total, but a well-formed frame can still carry a
//! label with a megabyte-long key or ten thousand images. Each message type
//! implements [`Validate`]; receivers call it before they act on a message.

/// A message that broke a bound, with the field path that broke it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Checks a value's bounds after it was decoded.
pub trait Validate {
    fn validate(&self) -> Result<(), Invalid>;
}

/// Checks a string's length.
pub fn max_len(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(Invalid::new(
            field,
            format!("{} bytes, at most {max} allowed", value.len()),
        ));
    }
    Ok(())
}

/// Checks a collection's length.
pub fn max_items<T>(field: &str, items: &[T], max: usize) -> Result<(), Invalid> {
    if items.len() > max {
        return Err(Invalid::new(
            field,
            format!("{} items, at most {max} allowed", items.len()),
        ));
    }
    Ok(())
}

/// A label key: 1–63 characters of `[a-z0-9._-]`, starting with a letter or digit.
/// Label values: at most 255 printable characters without control characters.
pub fn label(field: &str, key: &str, value: &str) -> Result<(), Invalid> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        && key.as_bytes()[0].is_ascii_alphanumeric();
    if !key_ok {
        return Err(Invalid::new(
            format!("{field}.{}", key.chars().take(63).collect::<String>()),
            "label keys are 1-63 characters of a-z, 0-9, '.', '_', '-', '/', starting with a letter or digit",
        ));
    }
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err(Invalid::new(
            format!("{field}.{key}"),
            "label values are at most 255 characters, no control characters",
        ));
    }
    Ok(())
}

/// Parses `key=value` as given on a command line, validating both halves.
pub fn parse_label(s: &str) -> Result<(String, String), Invalid> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| Invalid::new("label", format!("{s:?} is not of the form key=value")))?;
    label("label", k, v)?;
    Ok((k.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(parse_label("gpu=true"), Ok(("gpu".into(), "true".into())));
        assert!(parse_label("zone=").is_ok());
        assert!(parse_label("gpu").is_err());
        assert!(parse_label("GPU=true").is_err());
        assert!(parse_label("=x").is_err());
        assert!(parse_label(&format!("{}=x", "a".repeat(64))).is_err());
        assert!(parse_label("a=b\nc").is_err());
    }
}
