//! The error type of the harness.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// Errors from the harness. Where a peer process is involved, the error carries
/// that process's logs so that a failing test shows what the peer said.
#[derive(Debug)]
pub enum Error {
    /// An I/O operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A condition was not met in time.
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// Details: last observed state and the logs of the processes involved.
        details: String,
    },
    /// A peer process exited while it was expected to keep running.
    Exited {
        /// Name of the process (as given to [`crate::process::ChildGuard::spawn`]).
        name: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its logs.
        logs: String,
    },
    /// A helper command (`chronyc`, `ntpq`, ...) failed.
    Command {
        /// The command line.
        command: String,
        /// Its exit status, if it ran.
        status: Option<ExitStatus>,
        /// Its standard output and error.
        output: String,
    },
    /// Output of a peer or helper command could not be parsed.
    Parse {
        /// What was being parsed.
        what: String,
        /// The offending input.
        input: String,
        /// Why it did not parse.
        reason: String,
    },
    /// Anything else (configuration, certificates, safety checks, ...).
    Other(String),
}

/// Result with the harness's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn parse(
        what: impl Into<String>,
        input: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Parse {
            what: what.into(),
            input: input.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Timeout {
                what,
                waited,
                details,
            } => write!(
                f,
                "timed out after {waited:?} waiting for {what}\n{details}"
            ),
            Error::Exited { name, status, logs } => {
                write!(f, "process {name} exited unexpectedly ({status})\n{logs}")
            }
            Error::Command {
                command,
                status,
                output,
            } => match status {
                Some(s) => write!(f, "command `{command}` failed ({s}):\n{output}"),
                None => write!(f, "command `{command}` failed:\n{output}"),
            },
            Error::Parse {
                what,
                input,
                reason,
            } => write!(f, "cannot parse {what}: {reason}; input: {input:?}"),
            Error::Other(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
