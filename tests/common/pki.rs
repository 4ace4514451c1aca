//! Certificates made at test time (never committed keys): one CA for the cluster, certificates
//! for etcd and its clients, and the broken variants the TLS tests need.
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// PEM files in one folder. Every certificate `X.pem` has its key in `X-key.pem` (mode 0600):
/// - `ca.pem`: the cluster's CA;
/// - `server.pem`: etcd's certificate (client and peer side), valid for every lab IP;
/// - `client.pem`: flint's and etcdctl's client certificate;
/// - `server-expired.pem`: like `server.pem` but its validity ended in 2021;
/// - `server-wrong-name.pem`: signed by the CA but valid only for `wrong.example`;
/// - `other-ca.pem`, `other-client.pem`: a second, unrelated CA and a client cert it signed.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path, server_ips: &[IpAddr]) -> Pki {
        fs::create_dir_all(dir).expect("create pki dir");
        let pki = Pki {
            dir: dir.to_path_buf(),
        };

        let (ca_params, ca_key) = new_ca("flint test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        pki.write_cert("ca", &ca_cert);
        let ca = Issuer::new(ca_params, ca_key);

        let mut server_sans: Vec<SanType> = server_ips
            .iter()
            .map(|ip| SanType::IpAddress(*ip))
            .collect();
        server_sans.push(SanType::IpAddress("127.0.0.1".parse().expect("literal IP")));
        server_sans.push(dns("localhost"));
        // etcd members also dial each other as clients (peer mTLS), so one certificate serves both.
        let server_usage = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        pki.leaf(
            "server",
            &ca,
            "etcd",
            server_sans.clone(),
            &server_usage,
            None,
        );
        pki.leaf(
            "server-expired",
            &ca,
            "etcd (expired)",
            server_sans,
            &server_usage,
            Some((2020, 2021)),
        );
        pki.leaf(
            "server-wrong-name",
            &ca,
            "wrong.example",
            vec![dns("wrong.example")],
            &server_usage,
            None,
        );
        let client_usage = [ExtendedKeyUsagePurpose::ClientAuth];
        pki.leaf("client", &ca, "flint", vec![], &client_usage, None);

        let (other_params, other_key) = new_ca("unrelated CA");
        let other_cert = other_params.self_signed(&other_key).expect("self-sign CA");
        pki.write_cert("other-ca", &other_cert);
        let other = Issuer::new(other_params, other_key);
        pki.leaf("other-client", &other, "flint", vec![], &client_usage, None);
        pki
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn leaf(
        &self,
        name: &str,
        issuer: &Issuer<'_, KeyPair>,
        common_name: &str,
        sans: Vec<SanType>,
        usage: &[ExtendedKeyUsagePurpose],
        validity_years: Option<(i32, i32)>,
    ) {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.extended_key_usages = usage.to_vec();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        if let Some((from, to)) = validity_years {
            params.not_before = date_time_ymd(from, 1, 1);
            params.not_after = date_time_ymd(to, 1, 1);
        }
        let key = KeyPair::generate().expect("generate key");
        let cert = params.signed_by(&key, issuer).expect("sign certificate");
        self.write_cert(name, &cert);
        let key_path = self.path(&format!("{name}-key.pem"));
        fs::write(&key_path, key.serialize_pem()).expect("write key");
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod key");
    }

    fn write_cert(&self, name: &str, cert: &Certificate) {
        fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write certificate");
    }
}

fn new_ca(common_name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params, KeyPair::generate().expect("generate CA key"))
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("valid DNS name"))
}
