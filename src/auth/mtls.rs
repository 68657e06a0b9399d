//! Identity from a client certificate that rustls already verified against the
//! configured client CA (DESIGN §4c): its URI and DNS SANs, matched exactly against the
//! identities registered to tenants. The subject's CN is never used.

use x509_parser::extensions::GeneralName;

/// What a verified client certificate says about its holder: its SANs. The subject's CN
/// is never used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCertificate {
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
}

impl ClientCertificate {
    /// The SANs of a DER certificate (already verified by rustls).
    pub fn from_der(der: &[u8]) -> ClientCertificate {
        let mut identity = ClientCertificate::default();
        let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
            return identity;
        };
        if let Ok(Some(san)) = certificate.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => identity.uri_sans.push((*uri).to_string()),
                    GeneralName::DNSName(dns) => identity.dns_sans.push((*dns).to_string()),
                    _ => {}
                }
            }
        }
        identity
    }

    pub fn sans(&self) -> impl Iterator<Item = &str> {
        self.uri_sans
            .iter()
            .chain(&self.dns_sans)
            .map(String::as_str)
    }
}
