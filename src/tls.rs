//! The rustls client configuration: the configured CA only, and a client certificate for mTLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::TlsFiles;
use crate::exit::{ExitStatus, HasExitStatus};
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
    /// The client certificate and its key cannot be used together (a key of another
    /// certificate, most often).
    #[error(
        "the client certificate {} and the key {} do not go together",
        cert.display(),
        key.display()
    )]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    /// The client certificate does not chain to the configured CA as one valid now for client
    /// authentication: every server of the cluster would refuse it.
    #[error("the client certificate {} would be refused by the cluster's servers", path.display())]
    Untrusted {
        path: PathBuf,
        source: rustls::Error,
    },
}

impl HasExitStatus for Error {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Secret(e) => e.exit_status(),
            Error::Load {
                source: pem::Error::Io(io),
                ..
            } if io.kind() == std::io::ErrorKind::PermissionDenied => ExitStatus::Permission,
            // As a peer that fails verification does (77): the same certificate, refused.
            Error::Untrusted { .. } => ExitStatus::Permission,
            _ => ExitStatus::Config,
        }
    }
}

/// What `flint config check` verifies of the TLS files, short of a handshake: everything
/// `client_config` needs (the CA as trust anchors, the key private and matching the
/// certificate), and that the certificate chains to the CA as a client certificate valid now,
/// as the cluster's servers verify it. The files checked, for the operator.
pub fn check(files: &TlsFiles) -> Result<Vec<String>, Error> {
    client_config(Some(files))?;
    let anchors = load_certs(&files.ca, "CA certificates")?;
    let mut checked = vec![format!(
        "TLS CA {}: {} certificate(s)",
        files.ca.display(),
        anchors.len()
    )];
    let Some(identity) = &files.client else {
        return Ok(checked);
    };
    let mut roots = RootCertStore::empty();
    for cert in anchors {
        roots.add(cert).map_err(|source| Error::BadAnchor {
            path: files.ca.clone(),
            source,
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Error::Rejected(rustls::Error::General(e.to_string())))?;
    let chain = load_certs(&identity.cert, "client certificate")?;
    let (end_entity, intermediates) = chain
        .split_first()
        .expect("load_certs returns one at least");
    verifier
        .verify_client_cert(
            end_entity,
            intermediates,
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(|source| Error::Untrusted {
            path: identity.cert.clone(),
            source,
        })?;
    checked.push(format!(
        "TLS client certificate {}: chains to the CA, valid now for client authentication; its \
         key {} matches it and is private",
        identity.cert.display(),
        identity.key.display()
    ));
    Ok(checked)
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
                .map_err(|source| Error::Identity {
                    cert: identity.cert.clone(),
                    key: identity.key.clone(),
                    source,
                })
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
