//! A test PKI generated at test time with rcgen: a CA, leaf certificates with chosen
//! SANs, usages and validity, and revocation lists.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;

pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let certificate = params.self_signed(&key).expect("CA");
    Ca {
        pem: certificate.pem(),
        issuer: Issuer::new(params, key),
    }
}

pub struct Leaf {
    pub pem: String,
    pub key_pem: String,
}

pub struct LeafSpec {
    pub sans: Vec<SanType>,
    pub usages: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub serial: u64,
    pub common_name: &'static str,
}

impl LeafSpec {
    pub fn client(sans: Vec<SanType>, serial: u64) -> LeafSpec {
        LeafSpec {
            sans,
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before: OffsetDateTime::now_utc() - time::Duration::days(1),
            not_after: OffsetDateTime::now_utc() + time::Duration::days(30),
            serial,
            common_name: "client",
        }
    }
}

pub fn leaf(ca: &Ca, spec: LeafSpec) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, spec.common_name);
    params.subject_alt_names = spec.sans;
    params.extended_key_usages = spec.usages;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.serial_number = Some(SerialNumber::from(spec.serial));
    params.use_authority_key_identifier_extension = true;
    let certificate = params.signed_by(&key, &ca.issuer).expect("leaf");
    Leaf {
        pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    }
}

pub fn crl(ca: &Ca, revoked: &[u64], next_update: OffsetDateTime) -> String {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::hours(2),
        next_update,
        crl_number: SerialNumber::from(now.unix_timestamp() as u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(*serial),
                revocation_time: now - time::Duration::hours(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .expect("CRL")
    .pem()
    .expect("pem")
}

pub fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().expect("ia5"))
}

pub fn dns(text: &str) -> SanType {
    SanType::DnsName(text.try_into().expect("ia5"))
}

/// A server certificate for 127.0.0.1 and localhost.
pub fn server_leaf(ca: &Ca) -> Leaf {
    leaf(
        ca,
        LeafSpec {
            usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            common_name: "promgate",
            ..LeafSpec::client(
                vec![
                    SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
                    dns("localhost"),
                ],
                1,
            )
        },
    )
}
