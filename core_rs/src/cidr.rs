//! `Ranges`: a precompiled set of IPv4/IPv6 networks (ip-restriction's `CidrSet`, real-ip's
//! `trusted_addresses`).
//!
//! Same semantics as the router's `IpSet` (lua-resty-ipmatcher): entries are CIDRs or plain addresses
//! (host bits are ignored), an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address, and an
//! IPv4 address also matches IPv6 networks covering its mapped form. Every network becomes a range of
//! the IPv6 space (IPv4 ones via `::ffff:0:0/96`); the ranges are sorted and merged once, so a lookup
//! is a binary search whatever the number of entries.

use ipnet::IpNet;
use std::net::IpAddr;

/// Sorted, disjoint, non-adjacent inclusive ranges of the (IPv4-mapped) IPv6 address space.
#[derive(Debug, Default)]
pub(crate) struct Ranges {
    ranges: Vec<(u128, u128)>,
    entries: usize,
}

/// An address as a point of the IPv6 space (IPv4 → `::ffff:a.b.c.d`).
fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// One entry: `"10.0.0.0/8"`, `"192.168.1.5"`, `"::1"`, `"fe80::/10"`.
fn parse_entry(raw: &str) -> Result<IpNet, String> {
    let s = raw.trim();
    if s.contains('/') {
        s.parse::<IpNet>()
            .map_err(|_| format!("invalid CIDR {raw:?}"))
    } else {
        s.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("invalid IP address {raw:?}"))
    }
}

/// The inclusive range of the IPv6 space a network covers.
fn range(net: IpNet) -> (u128, u128) {
    let (first, prefix) = match net.trunc() {
        IpNet::V4(n) => (
            u128::from(n.network().to_ipv6_mapped()),
            u32::from(n.prefix_len()) + 96,
        ),
        IpNet::V6(n) => (u128::from(n.network()), u32::from(n.prefix_len())),
    };
    let host_mask = u128::MAX.checked_shr(prefix).unwrap_or(0);
    (first, first | host_mask)
}

impl Ranges {
    pub(crate) fn parse<'a, I: IntoIterator<Item = &'a str>>(items: I) -> Result<Ranges, String> {
        let mut ranges = Vec::new();
        for raw in items {
            ranges.push(range(parse_entry(raw)?));
        }
        let entries = ranges.len();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged.shrink_to_fit();
        Ok(Ranges {
            ranges: merged,
            entries,
        })
    }

    pub(crate) fn contains_ip(&self, ip: IpAddr) -> bool {
        let k = key(ip);
        // The last range starting at or before `k` is the only candidate.
        let i = self.ranges.partition_point(|&(lo, _)| lo <= k);
        i > 0 && self.ranges[i - 1].1 >= k
    }

    /// False for anything that is not an IP address (IPv6 may be bracketed: `[::1]`).
    pub(crate) fn contains(&self, addr: &str) -> bool {
        let s = addr.trim();
        let s = s
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(s);
        match s.parse::<IpAddr>() {
            Ok(ip) => self.contains_ip(ip),
            Err(_) => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn set(items: &[&str]) -> Ranges {
        Ranges::parse(items.iter().copied()).unwrap()
    }

    #[test]
    fn ipv4_networks_and_addresses() {
        let s = set(&["10.0.0.0/8", "192.168.1.5", "172.16.0.1/12"]);
        assert_eq!(s.len(), 3);
        assert!(s.contains("10.0.0.0"));
        assert!(s.contains("10.255.255.255"));
        assert!(!s.contains("11.0.0.0"));
        assert!(!s.contains("9.255.255.255"));
        assert!(s.contains("192.168.1.5"));
        assert!(!s.contains("192.168.1.6"));
        assert!(!s.contains("192.168.1.4"));
        // Host bits are ignored: 172.16.0.1/12 is 172.16.0.0/12.
        assert!(s.contains("172.31.255.255"));
        assert!(!s.contains("172.32.0.0"));
    }

    #[test]
    fn ipv6_and_mapped() {
        let s = set(&["::1", "fe80::/10", "127.0.0.0/8"]);
        assert!(s.contains("::1"));
        assert!(s.contains("[::1]"));
        assert!(!s.contains("::2"));
        assert!(s.contains("fe80::1"));
        assert!(s.contains("febf:ffff::1"));
        assert!(!s.contains("fec0::1"));
        // An IPv4-mapped IPv6 client matches the IPv4 network; an IPv4 client never matches ::1.
        assert!(s.contains("::ffff:127.0.0.1"));
        assert!(s.contains("127.0.0.1"));
        assert!(!s.contains("::ffff:128.0.0.1"));
        // IPv4 clients match IPv6 networks covering their mapped form.
        let mapped = set(&["::ffff:10.0.0.0/104"]);
        assert!(mapped.contains("10.1.2.3"));
        assert!(!mapped.contains("11.1.2.3"));
        // ...but not IPv4-compatible or other IPv6 addresses with the same low bits.
        let v4 = set(&["10.0.0.0/8"]);
        assert!(!v4.contains("::10.0.0.1"));
        assert!(!v4.contains(&Ipv6Addr::from(0x0a00_0001u128).to_string()));
    }

    #[test]
    fn whole_spaces_and_edges() {
        let all4 = set(&["0.0.0.0/0"]);
        assert!(all4.contains("1.2.3.4") && all4.contains("255.255.255.255"));
        assert!(all4.contains("::ffff:1.2.3.4"));
        assert!(!all4.contains("::1"));
        let all6 = set(&["::/0"]);
        assert!(all6.contains("::") && all6.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(all6.contains("8.8.8.8"));
        assert!(set(&["255.255.255.255/32"]).contains("255.255.255.255"));
        assert!(!set(&[]).contains("1.1.1.1"));
    }

    #[test]
    fn bad_entries_and_addresses() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0",
            "example.com",
            "",
            "1.2.3.4/x",
            "/8",
        ] {
            let err = Ranges::parse([bad]).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let s = set(&["10.0.0.0/8"]);
        for bad in ["", "10.0.0", "10.0.0.1:80", "fe80::1%eth0", "[10.0.0.1"] {
            assert!(!s.contains(bad), "{bad}");
        }
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let s = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(s.len(), 4);
        assert_eq!(s.ranges.len(), 2);
        assert!(s.contains("10.0.1.255"));
        assert!(!s.contains("10.0.2.0"));
        assert!(s.contains("10.0.3.7"));
    }

    #[test]
    fn many_entries_agree_with_linear_scan() {
        let mut items = Vec::new();
        for i in 0..1000u32 {
            let a = i.wrapping_mul(2_654_435_761);
            let prefix = 8 + (i % 25);
            items.push(format!("{}/{prefix}", std::net::Ipv4Addr::from(a)));
            items.push(format!("2001:db8:{:x}::/{}", i, 48 + i % 80));
        }
        let s = Ranges::parse(items.iter().map(String::as_str)).unwrap();
        let nets: Vec<IpNet> = items.iter().map(|x| parse_entry(x).unwrap()).collect();
        for j in 0..5000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(j.wrapping_mul(0x9E37_79B9)));
            let b = IpAddr::from(Ipv6Addr::new(
                0x2001,
                0xdb8,
                (j % 1200) as u16,
                0,
                0,
                0,
                0,
                j as u16,
            ));
            for ip in [a, b] {
                let linear = nets.iter().any(|n| n.contains(&ip));
                assert_eq!(s.contains_ip(ip), linear, "{ip}");
            }
        }
    }
}
