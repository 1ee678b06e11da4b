//! `--legacy-peers`: the networks from which the reference's peers, which
//! cannot send a token, are accepted on a server that requires tokens.
//!
//! CIDR blocks are parsed by hand: `std::net` parses the address, and the
//! rest is a prefix length and a mask, fewer lines than a crate's API.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One network, `ADDRESS/PREFIX` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a network could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {text:?}: {why} (expected e.g. 127.0.0.0/8 or fd00::/8)")]
pub struct CidrError {
    text: String,
    why: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let err = |why| CidrError {
            text: text.to_owned(),
            why,
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| err("not an IP address"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= bits => p,
                _ => return Err(err("the prefix length is out of range")),
            },
        };
        if masked(network, prefix) != network {
            return Err(err("host bits are set beyond the prefix"));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// Whether `addr` is in this network. An IPv4 address mapped into IPv6
    /// (`::ffff:a.b.c.d`, as a dual-stack socket reports it) counts as IPv4.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        addr.is_ipv4() == self.network.is_ipv4() && masked(addr, self.prefix) == self.network
    }
}

/// Parses a comma-separated list (`--legacy-peers`).
pub fn parse_list(text: &str) -> Result<Vec<Cidr>, CidrError> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(str::parse)
        .collect()
}

fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let nets = parse_list("127.0.0.0/8, 172.17.0.0/16,fd00::/8,10.1.2.3").unwrap();
        let inside = |a: &str| nets.iter().any(|n| n.contains(ip(a)));
        assert!(inside("127.0.0.1"));
        assert!(inside("127.255.255.255"));
        assert!(inside("172.17.3.4"));
        assert!(!inside("172.18.0.1"));
        assert!(inside("fd12::1"));
        assert!(!inside("fe80::1"));
        assert!(inside("10.1.2.3"));
        assert!(!inside("10.1.2.4"));
        assert!(inside("::ffff:127.0.0.1"));
        assert!(!inside("::1"));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert_eq!(nets[0].to_string(), "127.0.0.0/8");
    }

    #[test]
    fn bad_networks_are_refused_with_the_reason() {
        for (text, why) in [
            ("127.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "prefix length"),
            ("::/129", "prefix length"),
            ("localhost/8", "not an IP address"),
            ("10.0.0.0/x", "prefix length"),
        ] {
            let err = text.parse::<Cidr>().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(text), "{text}: {err}");
        }
    }
}
