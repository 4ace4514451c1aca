//! The rustls configurations (ring provider). Server: the server's certificate, and client
//! certificates required and verified against a CA when one is given (mTLS). Client (member
//! mode, to its peers): the peers' CA only, and a client certificate when one is given.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot load {what} from {}", path.display())]
    Load {
        what: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    /// The file parsed, but held no certificate at all.
    #[error("no certificate in {}", .0.display())]
    Empty(PathBuf),
    /// rustls refused a certificate, a key, or their combination.
    #[error("TLS configuration rejected ({what}): {source}")]
    Rejected {
        what: &'static str,
        source: rustls::Error,
    },
    /// The client CA file cannot serve as a trust anchor.
    #[error("cannot use the client CA: {0}")]
    ClientCa(String),
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| Error::Load {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::Empty(path.to_path_buf()));
    }
    Ok(certs)
}

pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs(cert, "server certificate")?;
    let key = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Rejected {
            what: "protocol versions",
            source,
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for anchor in load_certs(ca, "client CA")? {
                roots.add(anchor).map_err(|source| Error::Rejected {
                    what: "client CA",
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| Error::Rejected {
            what: "certificate and key",
            source,
        })?;
    // The protocol is HTTP/1.1 only; saying so keeps clients that offer h2 from trying it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| Error::Load {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })
}

/// The client side of member mode: peers are verified against `ca` only (no system roots), and
/// `identity` (certificate chain, key) is presented when a peer asks for a client certificate.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for anchor in load_certs(ca, "peer CA")? {
        roots.add(anchor).map_err(|source| Error::Rejected {
            what: "peer CA",
            source,
        })?;
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Rejected {
            what: "protocol versions",
            source,
        })?
        .with_root_certificates(roots);
    // ALPN is left to hyper-rustls, which sets it from the HTTP versions it enables.
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = load_certs(cert, "client certificate")?;
            builder
                .with_client_auth_cert(chain, load_key(key)?)
                .map_err(|source| Error::Rejected {
                    what: "client certificate and key",
                    source,
                })?
        }
    };
    Ok(config)
}
