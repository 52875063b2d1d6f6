//! CIDR / single-address sets (lua-resty-ipmatcher equivalent).

use ipnet::IpNet;
use std::net::IpAddr;

pub(crate) struct IpSet {
    nets: Vec<IpNet>,
}

impl IpSet {
    /// Parses `"10.0.0.0/8"`, `"192.168.1.5"`, `"::1"`, `"fe80::/32"`.
    pub(crate) fn parse<'a, I: IntoIterator<Item = &'a str>>(items: I) -> Result<IpSet, String> {
        let mut nets = Vec::new();
        for raw in items {
            let s = raw.trim();
            let net = if s.contains('/') {
                s.parse::<IpNet>()
                    .map_err(|_| format!("invalid CIDR {raw:?}"))?
            } else {
                IpNet::from(
                    s.parse::<IpAddr>()
                        .map_err(|_| format!("invalid IP address {raw:?}"))?,
                )
            };
            nets.push(net.trunc());
        }
        Ok(IpSet { nets })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// True when `ip` is in any of the networks. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) is treated as the IPv4 address, and an IPv4 address also
    /// matches IPv6 networks covering its mapped form.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| match (net, ip) {
            (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
            (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
            (IpNet::V6(n), IpAddr::V4(a)) => n.contains(&a.to_ipv6_mapped()),
            (IpNet::V4(_), IpAddr::V6(_)) => false,
        })
    }
}
