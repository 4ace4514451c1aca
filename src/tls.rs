//! The rustls client configuration: the configured CA only, and a client certificate for mTLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::TlsFiles;
use crate::exit::{Classify, ExitStatus};
use crate::secrets;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot load {what} from {}", path.display())]
    Load {
        what: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    /// A certificate that parses as PEM but that rustls cannot use as a trust anchor.
    #[error("cannot use a CA certificate from {}", path.display())]
    BadAnchor {
        path: PathBuf,
        source: rustls::Error,
    },
    /// The private key is not safe to use.
    #[error(transparent)]
    Secret(#[from] secrets::Error),
    /// rustls refused the combination (a key that does not match its certificate, say).
    #[error("TLS configuration rejected: {0}")]
    Rejected(rustls::Error),
}

impl Classify for Error {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Secret(e) => e.exit_status(),
            Error::Load {
                source: pem::Error::Io(io),
                ..
            } if io.kind() == std::io::ErrorKind::PermissionDenied => ExitStatus::Permission,
            _ => ExitStatus::Config,
        }
    }
}

/// Builds the client configuration from the files named in `cluster-config.json`; without a
/// `tls` section there are no roots at all, so an https URL can never be reached unverified.
pub fn client_config(files: Option<&TlsFiles>) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Rejected)?;
    let mut roots = RootCertStore::empty();
    let Some(files) = files else {
        return Ok(builder.with_root_certificates(roots).with_no_client_auth());
    };
    for cert in load_certs(&files.ca, "CA certificates")? {
        roots.add(cert).map_err(|source| Error::BadAnchor {
            path: files.ca.clone(),
            source,
        })?;
    }
    let builder = builder.with_root_certificates(roots);
    match &files.client {
        None => Ok(builder.with_no_client_auth()),
        Some(identity) => {
            secrets::ensure_private(&identity.key)?;
            let chain = load_certs(&identity.cert, "client certificate")?;
            let key_error = |source| Error::Load {
                what: "private key",
                path: identity.key.clone(),
                source,
            };
            let pem = read(&identity.key).map_err(key_error)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(key_error)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(Error::Rejected)
        }
    }
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let load_error = |source| Error::Load {
        what,
        path: path.to_owned(),
        source,
    };
    let pem = read(path).map_err(load_error)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(load_error)?;
    if certs.is_empty() {
        return Err(load_error(pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// A PEM file, read as the node's files are: regular, bounded (a link to `/dev/zero` once made
/// rustls ask for 2 GiB and abort).
fn read(path: &Path) -> Result<Vec<u8>, pem::Error> {
    crate::files::read_bounded(path, crate::files::MAX_TEXT).map_err(pem::Error::Io)
}
