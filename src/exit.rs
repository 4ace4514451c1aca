//! Process exit statuses (sysexits), the contract with the units' `RestartPreventExitStatus=`.

use std::fmt;

/// What a run of flint ended with. The numbers are part of flint's interface: systemd units
/// stop restarting on the permanent ones (64, 65, 77, 78).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Done, already done, or healthy.
    Success,
    /// `flint health` found a service without quorum or without exactly one leader.
    Unhealthy,
    /// The command line was wrong.
    Usage,
    /// A server answered something flint cannot accept (malformed, or a conflicting membership).
    BadAnswer,
    /// The deadline passed while a service was unreachable or not ready.
    Unavailable,
    /// A secret readable by others, a file flint may not read, or a peer that failed TLS
    /// verification.
    Permission,
    /// The configuration is missing or invalid.
    Config,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Unhealthy => 1,
            ExitStatus::Usage => 64,
            ExitStatus::BadAnswer => 65,
            ExitStatus::Unavailable => 69,
            ExitStatus::Permission => 77,
            ExitStatus::Config => 78,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// Implemented by every error type of flint's modules; `crate::Error::exit_status` matches on
/// each of them, so the mapping is total.
pub trait Classify {
    fn exit_status(&self) -> ExitStatus;
}

/// The configuration is read by its own crate (shared with `flint-boot prepare`); what its
/// errors mean to the units is flint's to say.
impl Classify for flint_config::Error {
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
