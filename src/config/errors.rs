//! Why a config was refused, in one line: `key (line N): message`, from
//! serde's errors or from validation.

use super::*;

/// Why a config was refused. `Display` is the one line an operator sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `key` is the key path (`pools[1].start_index`), `line` 1-based when known.
    #[error("{}", render_invalid(key, *line, message))]
    Invalid {
        key: String,
        line: Option<usize>,
        message: String,
    },
}

pub(super) fn render_invalid(key: &str, line: Option<usize>, message: &str) -> String {
    match (key.is_empty(), line) {
        (true, Some(l)) => format!("line {l}: {message}"),
        (true, None) => message.to_string(),
        (false, Some(l)) => format!("{key} (line {l}): {message}"),
        (false, None) => format!("{key}: {message}"),
    }
}

/// Turns a serde_norway error into our `key (line N): message` shape. The
/// error's text starts with the key path (`pools[0]: …`) unless the problem
/// is at the top level, and ends with ` at line L column C`, which we render
/// ourselves.
pub(super) fn yaml_error(text: &str, e: &serde_norway::Error) -> ConfigError {
    let location = e.location();
    let mut line = location.as_ref().map(|l| l.line());
    let mut full = e.to_string();
    if let Some(l) = &location {
        full = full.replacen(
            &format!(" at line {} column {}", l.line(), l.column()),
            "",
            1,
        );
    }
    let (path, msg) = split_error_path(&full);

    let (key, message) = if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.trim_start_matches([',', ' ']).replace('`', "");
        let message = if expected.is_empty() {
            "unknown key".to_string()
        } else {
            format!("unknown key; {expected}")
        };
        (join_key(path, name), message)
    } else if let Some(rest) = msg.strip_prefix("duplicate field `") {
        // serde points at the start of the mapping; the line that matters is
        // the second occurrence, which the text walk can find.
        let name = rest.split_once('`').map_or(rest, |(n, _)| n);
        match yaml_lines::duplicate_key(text) {
            Some((key, l)) => {
                line = Some(l);
                (key, "duplicate key".to_string())
            }
            None => (join_key(path, name), "duplicate key".to_string()),
        }
    } else if path.is_empty() && location.is_some() && !msg.starts_with("invalid type") {
        // A YAML syntax error: no key to name.
        (String::new(), format!("invalid YAML: {msg}"))
    } else {
        (path.to_string(), humanize_serde(msg))
    };
    ConfigError::Invalid { key, line, message }
}

/// Splits `pools[0].min: invalid type …` into the path and the message; a
/// prefix that does not look like a key path (e.g. `invalid type`) is part
/// of the message.
pub(super) fn split_error_path(msg: &str) -> (&str, &str) {
    if let Some((path, rest)) = msg.split_once(": ") {
        let is_path = !path.is_empty()
            && path != "."
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]?".contains(c));
        if is_path {
            return (path, rest);
        }
    }
    ("", msg)
}

/// Replaces Rust type names in serde messages with YAML words.
pub(super) fn humanize_serde(msg: &str) -> String {
    let mut out = msg.replace("unit value", "empty value");
    for (from, to) in [
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a mapping"),
    ] {
        out = out.replace(from, to);
    }
    if let Some(i) = out.find("expected struct ") {
        out.truncate(i);
        out.push_str("expected a mapping");
    }
    out
}

pub(super) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}
