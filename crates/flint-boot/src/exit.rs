//! Exit statuses of `flint-boot` (sysexits, as the node binary `flint` uses them).

/// Every status flint-boot exits with and what it tells an operator, as `--help` and the man
/// pages list them; `ExitError::code` returns only these (tested).
pub const EXIT_STATUSES: &[(u8, &str)] = &[
    (0, "done; serve: stopped by SIGTERM or SIGINT"),
    (64, "the command line is inconsistent"),
    (
        69,
        "a socket cannot be opened, a service died, or etcd or the boot server cannot be reached",
    ),
    (73, "render cannot write its output"),
    (
        75,
        "inventory put: the stored inventory changed since it was read; read it again",
    ),
    (76, "a boot server or etcd answered outside its protocol"),
    (
        77,
        "a port below 1024 without CAP_NET_BIND_SERVICE, or a file flint-boot may not read",
    ),
    (
        78,
        "the inventory or a setting is invalid (the line names it)",
    ),
];

/// The exit statuses as `--help` ends with them.
pub fn help() -> String {
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in EXIT_STATUSES {
        text.push_str(&format!("  {code:>2}  {meaning}\n"));
    }
    text
}

/// A failure and the status the process exits with.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// 64: the command line is inconsistent.
    #[error("{0}")]
    Usage(String),
    /// 78: the inventory or a URL is invalid.
    #[error("{0}")]
    Config(String),
    /// 69: a socket cannot be opened (address in use, interface missing) or a service died.
    #[error("{0}")]
    Unavailable(String),
    /// 77: a privileged port without the capability to bind it, or a file we may not read.
    #[error("{0}")]
    Permission(String),
    /// 73: `render` cannot write its output.
    #[error("{0}")]
    CantCreate(String),
    /// 75: what the command was to replace changed since it was read; read it again.
    #[error("{0}")]
    Conflict(String),
    /// 76: a boot server answered `status` with something other than its fleet view, or etcd
    /// answered with something other than what its API says.
    #[error("{0}")]
    Protocol(String),
}

impl ExitError {
    pub fn code(&self) -> u8 {
        match self {
            ExitError::Usage(_) => 64,
            ExitError::Unavailable(_) => 69,
            ExitError::CantCreate(_) => 73,
            ExitError::Conflict(_) => 75,
            ExitError::Protocol(_) => 76,
            ExitError::Permission(_) => 77,
            ExitError::Config(_) => 78,
        }
    }

    /// The same status, its message after `what`.
    pub fn context(self, what: &str) -> ExitError {
        let with = |msg: String| format!("{what}: {msg}");
        match self {
            ExitError::Usage(m) => ExitError::Usage(with(m)),
            ExitError::Config(m) => ExitError::Config(with(m)),
            ExitError::Unavailable(m) => ExitError::Unavailable(with(m)),
            ExitError::Permission(m) => ExitError::Permission(with(m)),
            ExitError::CantCreate(m) => ExitError::CantCreate(with(m)),
            ExitError::Conflict(m) => ExitError::Conflict(with(m)),
            ExitError::Protocol(m) => ExitError::Protocol(with(m)),
        }
    }

    pub fn socket(what: String, e: &std::io::Error) -> ExitError {
        let msg = format!("{what}: {e}");
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            ExitError::Permission(format!(
                "{msg} (ports below 1024 need CAP_NET_BIND_SERVICE)"
            ))
        } else {
            ExitError::Unavailable(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_returned_is_in_the_table_and_every_failure_in_the_table_is_returned() {
        let returned: Vec<u8> = [
            ExitError::Usage(String::new()),
            ExitError::Config(String::new()),
            ExitError::Unavailable(String::new()),
            ExitError::Permission(String::new()),
            ExitError::CantCreate(String::new()),
            ExitError::Conflict(String::new()),
            ExitError::Protocol(String::new()),
        ]
        .iter()
        .map(ExitError::code)
        .collect();
        let listed: Vec<u8> = EXIT_STATUSES.iter().map(|(code, _)| *code).collect();
        for code in &returned {
            assert!(listed.contains(code), "{code} is returned but not listed");
        }
        for code in listed.iter().filter(|c| **c != 0) {
            assert!(
                returned.contains(code),
                "{code} is listed but never returned"
            );
        }
    }
}
