//! The one error type of octet: every failure names the file and field it concerns, expected vs found.

use std::path::PathBuf;

/// All octet errors. Variants carry enough context for a user to fix the input without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is wrong: `field` names what is wrong, `msg` says expected vs found.
    #[error("{path}: field `{field}`: {msg}")]
    Format { path: PathBuf, field: String, msg: String },
    /// Two shapes that must agree do not.
    #[error("shape mismatch for `{name}`: expected {expected:?}, found {found:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    /// A configuration or flag value is out of range or unknown.
    #[error("invalid value for `{field}`: {msg}")]
    Config { field: String, msg: String },
    /// Training produced a non-finite number.
    #[error("non-finite {what} at step {step}: {value}")]
    NonFinite { what: String, step: usize, value: f64 },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn format(path: impl Into<PathBuf>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), field: field.into(), msg: msg.into() }
    }
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { field: field.into(), msg: msg.into() }
    }
}
