//! The cluster's certificates: a CA made once (or the operator's own), and for each node keys and
//! certificates it signs. rcgen writes them; x509-parser reads back what an earlier run wrote, so
//! a certificate is kept while it still says what the inventory says, and reissued (with the
//! same key) when it does not.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a CA made here is valid: kubeadm's choice, past any node's certificate.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start an hour back, so a node whose clock is a little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The cluster CA: its certificate as written to every node, and what signs with it.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
    spki: Vec<u8>,
}

impl Ca {
    /// A new CA and its key (the key as PEM, for the operator's folder).
    pub fn generate(name: &str) -> Result<(Ca, String), String> {
        let key = KeyPair::generate().map_err(|e| format!("generate the CA key: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("sign the CA certificate: {e}"))?;
        let key_pem = key.serialize_pem();
        let ca = Ca::load(&cert.pem(), &key_pem)?;
        Ok((ca, key_pem))
    }

    /// A CA from its certificate and key (PEM): the key must be the certificate's, and the
    /// certificate a CA's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            format!("the key is not a PEM private key rcgen can sign with (PKCS#8 ECDSA, Ed25519 or RSA): {e}")
        })?;
        let der = first_certificate(cert_pem)?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| format!("the certificate is not X.509: {e}"))?;
        if !cert.is_ca() {
            return Err("the certificate is not a CA's (no basicConstraints CA:TRUE)".into());
        }
        let spki = cert.public_key().raw.to_vec();
        if spki != key.subject_public_key_info() {
            return Err("the key is not the certificate's: their public keys differ".into());
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| format!("cannot sign with this CA: {e}"))?;
        Ok(Ca {
            pem: cert_pem.to_owned(),
            issuer,
            spki,
        })
    }
}

/// What a node certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A listener: the node's services, etcd's client and peer ports. Client auth too: etcd's
    /// members dial each other with their peer certificate, and etcd's HTTP gateway dials its
    /// own gRPC port with its server certificate, refused without it when client certificates
    /// are required (etcd-io/etcd#9785, #16590; kubeadm's etcd certificates carry both).
    Server,
    /// The node as a client: flint's mTLS, the services' calls to each other.
    Client,
}

impl Usage {
    fn purposes(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// The names a certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    pub dns: BTreeSet<String>,
    pub ips: BTreeSet<IpAddr>,
}

/// One node certificate as the inventory asks for it.
pub struct Wanted<'a> {
    pub common_name: &'a str,
    pub names: &'a Names,
    pub usage: Usage,
    pub validity: Duration,
}

/// Why an existing certificate is not kept.
pub fn stale(cert_pem: &str, key: &KeyPair, ca: &Ca, wanted: &Wanted<'_>) -> Option<&'static str> {
    let Ok(der) = first_certificate(cert_pem) else {
        return Some("it is not a PEM certificate");
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return Some("it is not X.509");
    };
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Some("it is not for the node's key");
    }
    let ca_spki = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ca.spki).map(|(_, k)| k);
    if ca_spki.is_err() || cert.verify_signature(ca_spki.as_ref().ok()).is_err() {
        return Some("it is signed by another CA");
    }
    let mut names = Names::default();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    names.dns.insert(d.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        names.ips.insert(ip);
                    }
                }
                _ => {}
            }
        }
    }
    if &names != wanted.names {
        return Some("its names changed");
    }
    let purposes = match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            let mut p = Vec::new();
            if eku.value.server_auth {
                p.push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            if eku.value.client_auth {
                p.push(ExtendedKeyUsagePurpose::ClientAuth);
            }
            p
        }
        _ => Vec::new(),
    };
    if purposes != wanted.usage.purposes() {
        return Some("its usage changed");
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let validity = cert.validity();
    if validity.not_before.timestamp() > now {
        return Some("it is not valid yet");
    }
    // Renewed once a third of the validity asked for is left (30 days of a year): early enough
    // that a node never meets an expired one between two runs an operator makes.
    let renew_within = (wanted.validity.as_secs() / 3) as i64;
    if validity.not_after.timestamp() - now < renew_within {
        return Some("it expires soon");
    }
    None
}

/// A certificate for `key`, signed by the CA.
pub fn issue(key: &KeyPair, ca: &Ca, wanted: &Wanted<'_>) -> Result<String, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, wanted.common_name);
    let mut sans = Vec::new();
    for dns in &wanted.names.dns {
        let name = dns
            .as_str()
            .try_into()
            .map_err(|e| format!("{dns:?} cannot be a DNS name in a certificate: {e}"))?;
        sans.push(SanType::DnsName(name));
    }
    sans.extend(wanted.names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.extended_key_usages = wanted.usage.purposes();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + wanted.validity;
    params.serial_number = Some(random_serial()?);
    let cert = params
        .signed_by(key, &ca.issuer)
        .map_err(|e| format!("sign the certificate of {}: {e}", wanted.common_name))?;
    Ok(cert.pem())
}

/// A new private key (ECDSA P-256: what etcd, Go's TLS and rustls all take), as PEM.
pub fn new_key() -> Result<KeyPair, String> {
    KeyPair::generate().map_err(|e| format!("generate a key: {e}"))
}

pub fn parse_key(pem: &str) -> Result<KeyPair, String> {
    KeyPair::from_pem(pem).map_err(|e| format!("not a PEM private key: {e}"))
}

/// `len` bytes from the system's CSPRNG, as lowercase hex: tokens.
pub fn random_hex(len: usize) -> Result<String, String> {
    let mut bytes = vec![0u8; len];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A positive 16-byte serial (RFC 5280: unique per CA, at most 20 bytes).
fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system's random source failed".to_string())?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The DER of the first certificate in a PEM text.
fn first_certificate(pem: &str) -> Result<Vec<u8>, String> {
    let mut rest = pem.as_bytes();
    loop {
        let (next, block) = x509_parser::pem::parse_x509_pem(rest)
            .map_err(|_| "no PEM certificate in it".to_string())?;
        if block.label == "CERTIFICATE" {
            return Ok(block.contents);
        }
        rest = next;
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}
