//! The boot server's TLS identity as files name it: the cluster CA, this server's certificate
//! and its key. The report listener serves with it; the etcd client presents it.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ExitError;

/// The largest PEM file read at start: a CA bundle is a few KiB.
const MAX_PEM: u64 = 1 << 20;

/// The three files and the flags that named them, so every error names the flag to fix.
pub struct Files<'a> {
    pub ca: (&'static str, &'a Path),
    pub cert: (&'static str, &'a Path),
    pub key: (&'static str, &'a Path),
}

pub struct Identity {
    pub roots: RootCertStore,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Files<'_> {
    /// Reads all three. A key readable by group or others is refused (77), as `prepare` and
    /// flint refuse one: it may have been copied; so is a file flint-boot may not read. A file
    /// that is missing, not a regular file or holds no usable PEM is 78, naming the flag and
    /// the file.
    pub fn load(&self) -> Result<Identity, ExitError> {
        let (key_flag, key_path) = self.key;
        let key_meta =
            std::fs::metadata(key_path).map_err(|e| unreadable(key_flag, key_path, e))?;
        let mode = key_meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ExitError::Permission(format!(
                "{key_flag} {} is readable by group or others (mode {mode:04o}): it may have \
                 been copied; chmod 600 it if it cannot have been, or replace it",
                shown(key_path)
            )));
        }
        let mut roots = RootCertStore::empty();
        let (ca_flag, ca_path) = self.ca;
        for ca in certificates(self.ca)? {
            roots.add(ca).map_err(|e| {
                ExitError::Config(format!(
                    "{ca_flag} {}: not a CA certificate: {e}",
                    shown(ca_path)
                ))
            })?;
        }
        let chain = certificates(self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&read_pem(self.key)?).map_err(|e| {
            ExitError::Config(format!(
                "{key_flag} {}: expected a PEM private key: {e}",
                shown(key_path)
            ))
        })?;
        Ok(Identity { roots, chain, key })
    }

    /// The error of a certificate and key rustls will not pair.
    pub fn mismatch(&self, e: rustls::Error) -> ExitError {
        ExitError::Config(format!(
            "{} {} with {} {}: {e}",
            self.cert.0,
            shown(self.cert.1),
            self.key.0,
            shown(self.key.1)
        ))
    }
}

fn certificates((flag, path): (&str, &Path)) -> Result<Vec<CertificateDer<'static>>, ExitError> {
    let pem = read_pem((flag, path))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ExitError::Config(format!(
                "{flag} {}: expected PEM certificates: {e}",
                shown(path)
            ))
        })?;
    if certs.is_empty() {
        return Err(ExitError::Config(format!(
            "{flag} {}: no PEM certificate in it",
            shown(path)
        )));
    }
    Ok(certs)
}

/// A file flint-boot may not read is 77, as in its table (under the shipped unit's dynamic
/// user, a key left root's and 0600 without the credential the unit's comment shows); any other
/// failure to read is 78.
fn unreadable(flag: &str, path: &Path, e: std::io::Error) -> ExitError {
    let message = format!("{flag} {}: cannot read: {e}", shown(path));
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        ExitError::Permission(message)
    } else {
        ExitError::Config(message)
    }
}

fn read_pem((flag, path): (&str, &Path)) -> Result<Vec<u8>, ExitError> {
    let cant = |e: std::io::Error| unreadable(flag, path, e);
    let file = std::fs::File::open(path).map_err(cant)?;
    // A FIFO or a device would hold the start-up, or never end.
    if !file.metadata().map_err(cant)?.is_file() {
        return Err(ExitError::Config(format!(
            "{flag} {}: not a regular file",
            shown(path)
        )));
    }
    let mut pem = Vec::new();
    file.take(MAX_PEM + 1).read_to_end(&mut pem).map_err(cant)?;
    if pem.len() as u64 > MAX_PEM {
        return Err(ExitError::Config(format!(
            "{flag} {}: larger than {MAX_PEM} bytes",
            shown(path)
        )));
    }
    Ok(pem)
}

pub fn shown(path: &Path) -> String {
    flint_json::one_line(&path.display().to_string())
}
