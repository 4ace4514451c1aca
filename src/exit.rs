//! Process exit statuses (sysexits), the contract with the units' `RestartPreventExitStatus=`.

use std::fmt;

/// The table of statuses: each variant, its number and what it tells an operator. The enum,
/// `code`, `meaning` and `ALL` are made from it, so `--help` and the man pages (flint-dist)
/// list exactly what the code returns.
macro_rules! exit_statuses {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $meaning:literal;)*) => {
        /// What a run of flint ended with. The numbers are part of flint's interface: systemd
        /// units stop restarting on the permanent ones (64, 65, 77, 78).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ExitStatus {
            $($(#[$doc])* $variant,)*
        }

        impl ExitStatus {
            pub const ALL: &[ExitStatus] = &[$(ExitStatus::$variant),*];

            pub fn code(self) -> u8 {
                match self {
                    $(ExitStatus::$variant => $code,)*
                }
            }

            /// One line for `--help` and the man pages' EXIT STATUS.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(ExitStatus::$variant => $meaning,)*
                }
            }
        }
    };
}

exit_statuses! {
    /// Done, already done, or healthy.
    Success = 0, "done, done before (a marker), or healthy";
    /// `flint health` found a service without quorum or without exactly one leader.
    Unhealthy = 1, "flint health: a service without quorum, without one leader, or a member missing";
    /// The command line was wrong.
    Usage = 64, "the command line is wrong";
    /// A server answered something flint cannot accept (malformed, or a conflicting membership).
    BadAnswer = 65, "a server answered what flint cannot accept (malformed, a conflicting member)";
    /// The deadline passed while a service was unreachable or not ready.
    Unavailable = 69, "the deadline passed while a service was unreachable or not ready (retried)";
    /// The disk under the state directory is full or failing: a marker or `etcd.env` could not
    /// be written (or read). Retried, since space may be freed; the join it records is found
    /// done on the next run and recorded then.
    StateDisk = 74, "the state directory's disk is full or failing (retried)";
    /// A secret readable by others, a file flint may not read, or a peer that failed TLS
    /// verification.
    Permission = 77, "a secret readable by others, a file flint may not read, or TLS verification failed";
    /// The configuration is missing or invalid.
    Config = 78, "the configuration is missing or invalid (the line names the file and field)";
}

/// The exit statuses as `--help` ends with them.
pub fn help() -> String {
    let mut text = String::from("Exit status:\n");
    for status in ExitStatus::ALL {
        text.push_str(&format!("  {:>2}  {}\n", status.code(), status.meaning()));
    }
    text
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// Implemented by every error type of flint's modules; `crate::Error::exit_status` matches on
/// each of them, so the mapping is total.
pub trait HasExitStatus {
    fn exit_status(&self) -> ExitStatus;
}

/// The configuration is read by its own crate (shared with `flint-boot prepare`); what its
/// errors mean to the units is flint's to say.
impl HasExitStatus for flint_config::Error {
    fn exit_status(&self) -> ExitStatus {
        match self {
            flint_config::Error::Read { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                ExitStatus::Permission
            }
            _ => ExitStatus::Config,
        }
    }
}
