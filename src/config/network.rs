//! IP networks in CIDR notation and the set of them a listener trusts as proxies
//! (`trusted_proxies`, SECURITY.md T16). Parsing and matching only; which address a
//! request is attributed to is decided in `admission::client_address`.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) are the IPv4 addresses they carry, on
//! both sides of a match: a dual-stack socket reports IPv4 peers that way.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a `trusted_proxies` entry is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0:?} is not an IP address or network such as 10.0.0.0/8 or 2001:db8::/32")]
    Syntax(String),
    #[error("{text:?}: the prefix length must be at most {max}")]
    PrefixTooLong { text: String, max: u8 },
    #[error("{text:?} has bits set after the prefix; did you mean {network}?")]
    HostBitsSet { text: String, network: IpNetwork },
}

/// One network: an address whose bits after `prefix_len` are all zero. A plain address
/// is the network of that one address (/32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    address: IpAddr,
    prefix_len: u8,
}

impl IpNetwork {
    /// The network `address/prefix_len`; refuses a prefix longer than the address and an
    /// address with host bits set (`10.1.2.3/8` is a typo more often than a network).
    pub fn new(address: IpAddr, prefix_len: u8) -> Result<IpNetwork, NetworkError> {
        let (address, prefix_len) = canonical(address, prefix_len);
        let max = max_prefix_len(address);
        let text = format!("{address}/{prefix_len}");
        if prefix_len > max {
            return Err(NetworkError::PrefixTooLong { text, max });
        }
        let network = IpNetwork {
            address: masked(address, prefix_len),
            prefix_len,
        };
        if network.address != address {
            return Err(NetworkError::HostBitsSet { text, network });
        }
        Ok(network)
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `address` lies in this network (IPv4-mapped IPv6 addresses as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        address.is_ipv4() == self.address.is_ipv4()
            && masked(address, self.prefix_len) == self.address
    }
}

impl FromStr for IpNetwork {
    type Err = NetworkError;

    /// `10.0.0.0/8`, `2001:db8::/32`, or a plain address.
    fn from_str(text: &str) -> Result<IpNetwork, NetworkError> {
        let syntax = || NetworkError::Syntax(text.to_string());
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, prefix)) => {
                // Digits only: `u8::from_str` would also take a leading `+`.
                if prefix.is_empty()
                    || prefix.len() > 3
                    || !prefix.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(syntax());
                }
                let address: IpAddr = address.parse().map_err(|_| syntax())?;
                let prefix_len: u8 = prefix.parse().map_err(|_| syntax())?;
                (address, prefix_len)
            }
            None => {
                let address: IpAddr = text.parse().map_err(|_| syntax())?;
                (address, max_prefix_len(address))
            }
        };
        IpNetwork::new(address, prefix_len)
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// The peers a listener believes about the client address: the source of a PROXY
/// protocol header, or `X-Forwarded-For` entries. Empty (the default) trusts no one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNetwork>,
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNetwork>) -> TrustedProxies {
        TrustedProxies { networks }
    }

    /// Parses every entry; on failure, one message per bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, Vec<NetworkError>> {
        let mut networks = Vec::with_capacity(entries.len());
        let mut errors = Vec::new();
        for entry in entries {
            match entry.as_ref().trim().parse::<IpNetwork>() {
                Ok(network) => networks.push(network),
                Err(err) => errors.push(err),
            }
        }
        if errors.is_empty() {
            Ok(TrustedProxies { networks })
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    pub fn networks(&self) -> &[IpNetwork] {
        &self.networks
    }

    /// Whether `address` is one of the trusted proxies.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.networks
            .iter()
            .any(|network| network.contains(address))
    }
}

fn max_prefix_len(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `::ffff:a.b.c.d/p` with p ≥ 96 is the IPv4 network `a.b.c.d/(p − 96)`.
fn canonical(address: IpAddr, prefix_len: u8) -> (IpAddr, u8) {
    match address {
        IpAddr::V6(v6) if prefix_len >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix_len - 96),
            None => (address, prefix_len),
        },
        _ => (address, prefix_len),
    }
}

/// `address` with every bit after the first `prefix_len` cleared.
fn masked(address: IpAddr, prefix_len: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(text: &str) -> IpNetwork {
        text.parse().expect("valid network")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("valid address")
    }

    #[test]
    fn networks_and_plain_addresses_parse() {
        assert_eq!(network("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(network("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(network("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(network("::1").to_string(), "::1/128");
        assert_eq!(network("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(network("::/0").to_string(), "::/0");
        // A mapped IPv4 network is the IPv4 network.
        assert_eq!(network("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        assert_eq!(network("::ffff:192.0.2.1").to_string(), "192.0.2.1/32");
    }

    #[test]
    fn bad_entries_are_refused() {
        for text in [
            "",
            "/",
            "10.0.0.0/",
            "/8",
            "10.0.0/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0 /8",
            "example.com",
            "10.0.0.0/0x8",
            "[::1]",
            "::1/1000",
        ] {
            assert!(text.parse::<IpNetwork>().is_err(), "{text:?} was accepted");
        }
        assert_eq!(
            "10.1.2.3/8".parse::<IpNetwork>(),
            Err(NetworkError::HostBitsSet {
                text: "10.1.2.3/8".into(),
                network: network("10.0.0.0/8"),
            })
        );
    }

    #[test]
    fn membership_follows_the_prefix() {
        let net = network("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("9.255.255.255")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "mapped IPv4 peer");
        assert!(
            !net.contains(ip("::a01:203")),
            "IPv4-compatible is not mapped"
        );
        let v6 = network("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(network("0.0.0.0/0").contains(ip("203.0.113.7")));
        assert!(!network("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(network("::/0").contains(ip("2001:db8::1")));
        assert!(
            !network("::/0").contains(ip("10.0.0.1")),
            "::/0 means IPv6 peers"
        );
        assert!(network("192.0.2.1").contains(ip("192.0.2.1")));
        assert!(!network("192.0.2.1").contains(ip("192.0.2.2")));
    }

    #[test]
    fn every_bad_entry_is_reported() {
        let errors = TrustedProxies::parse(&["10.0.0.0/8", "nonsense", "::1/200"])
            .expect_err("two bad entries");
        assert_eq!(errors.len(), 2);
        let trusted = TrustedProxies::parse(&[" 10.0.0.0/8 ", "2001:db8::1"]).expect("valid");
        assert!(trusted.contains(ip("10.9.9.9")));
        assert!(trusted.contains(ip("2001:db8::1")));
        assert!(!trusted.contains(ip("2001:db8::2")));
        assert!(!TrustedProxies::default().contains(ip("127.0.0.1")));
    }
}
