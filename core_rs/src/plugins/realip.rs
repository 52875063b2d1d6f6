//! The `real-ip` plugin (nginx `ngx_http_realip_module`, APISIX `real-ip`): when the TCP peer is a
//! trusted proxy, the client address comes from a header, query argument or other variable instead.
//!
//! Applied once, right after routing (APISIX runs it in `rewrite`, so route matching on
//! `remote_addrs` still sees the peer); everything after uses the new address: Python plugins'
//! `client_addr`, the native limiters' `remote_addr` key, chash on `remote_addr`, the
//! X-Forwarded-For appended to the upstream and the access log's `$remote_addr`.
use crate::cidr::Ranges;
use crate::router::{ReqVars, VarSource};
use serde::Deserialize;
use std::net::IpAddr;

/// APISIX's schema: `source` is required, `trusted_addresses` has at least one entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RealIpConf {
    source: String,
    #[serde(default)]
    trusted_addresses: Option<Vec<String>>,
    #[serde(default)]
    recursive: bool,
}

enum Source {
    /// `http_x_forwarded_for`: a comma-separated list, walked from the right.
    ForwardedFor,
    /// Another request header (`http_x_real_ip` → `x-real-ip`): exactly one line, one address.
    Header(String),
    /// Any other variable (`arg_realip`, `cookie_x`, ...).
    Var(String),
}

pub struct RealIp {
    source: Source,
    /// None: every peer may set the client address (APISIX without `trusted_addresses`).
    trusted: Option<Ranges>,
    recursive: bool,
}

impl RealIp {
    /// Compile a plugin conf; errors name the offending field (without the route prefix).
    pub fn compile(conf: &serde_json::Value) -> Result<RealIp, String> {
        let c: RealIpConf = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        if c.source.is_empty() {
            return Err("source: must not be empty".into());
        }
        let trusted = match &c.trusted_addresses {
            None => None,
            Some(v) if v.is_empty() => {
                return Err("trusted_addresses: at least one address is required".into())
            }
            Some(v) => Some(
                Ranges::parse(v.iter().map(String::as_str))
                    .map_err(|e| format!("trusted_addresses: {e}"))?,
            ),
        };
        let source = match c.source.strip_prefix("http_") {
            Some(h) => {
                let name = h.replace('_', "-").to_ascii_lowercase();
                if name == "x-forwarded-for" {
                    Source::ForwardedFor
                } else {
                    Source::Header(name)
                }
            }
            None => Source::Var(c.source),
        };
        Ok(RealIp {
            source,
            trusted,
            recursive: c.recursive,
        })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.as_ref().is_none_or(|t| t.contains_ip(ip))
    }

    /// The client address and port to use instead of the peer's, or None to keep the peer's
    /// (untrusted peer, missing or invalid source). `vars.remote` is the peer's address.
    pub fn client(&self, vars: &ReqVars<'_>, peer_port: u16) -> Option<(IpAddr, u16)> {
        let peer = vars.remote;
        if !self.trusts(peer) {
            return None;
        }
        let (ip, port) = match &self.source {
            Source::ForwardedFor => self.forwarded_for(vars.headers, peer)?,
            Source::Header(name) => {
                let mut lines = vars.headers.get_all(name.as_str()).iter();
                let (first, more) = (lines.next()?, lines.next());
                // Several lines of a one-address header: ambiguous, so keep the peer.
                if more.is_some() {
                    return None;
                }
                parse_addr(first.to_str().ok()?)?
            }
            Source::Var(name) => parse_addr(&vars.var(name)?)?,
        };
        Some((ip, port.unwrap_or(peer_port)))
    }

    /// nginx's walk: starting from the (trusted) peer, step left through X-Forwarded-For while the
    /// address in hand is trusted; non-recursive takes one step (the last entry). An entry that is
    /// not an address stops the walk at the last good one.
    fn forwarded_for(
        &self,
        headers: &http::HeaderMap,
        peer: IpAddr,
    ) -> Option<(IpAddr, Option<u16>)> {
        // Several X-Forwarded-For lines are one list (RFC 9110 §5.3), as nginx joins them.
        let lines: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<_>>()?;
        // Without trusted addresses there is nothing to walk past: the last entry (as APISIX).
        let recursive = self.recursive && self.trusted.is_some();
        let mut found: Option<(IpAddr, Option<u16>)> = None;
        let entries = lines
            .iter()
            .rev()
            .flat_map(|l| l.rsplit(','))
            .map(str::trim)
            .filter(|e| !e.is_empty());
        for entry in entries {
            let current = found.map_or(peer, |f| f.0);
            if found.is_some() && (!recursive || !self.trusts(current)) {
                break;
            }
            match parse_addr(entry) {
                Some(a) => found = Some(a),
                None => break,
            }
        }
        found
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80` → the address (IPv4-mapped as IPv4) and port.
fn parse_addr(s: &str) -> Option<(IpAddr, Option<u16>)> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip.to_canonical(), None));
    }
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => (h, Some(p.strip_prefix(':')?)),
            None => return None,
        },
        None => {
            let (h, p) = s.rsplit_once(':')?;
            (h, Some(p))
        }
    };
    let ip: IpAddr = host.parse().ok()?;
    if matches!((s.starts_with('['), ip), (false, IpAddr::V6(_))) {
        return None; // an unbracketed IPv6 address cannot carry a port
    }
    let port = match port {
        None => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|&p| p > 0)?)
        }
        Some(_) => return None,
    };
    Some((ip.to_canonical(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use serde_json::json;

    fn vars<'a>(h: &'a HeaderMap, query: Option<&'a str>, peer: &str) -> ReqVars<'a> {
        ReqVars {
            headers: h,
            query,
            path: "/",
            host: "h",
            method: "GET",
            remote: peer.parse().unwrap(),
            scheme: "http",
            consumer: None,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn client(conf: serde_json::Value, h: &HeaderMap, peer: &str) -> Option<String> {
        let r = RealIp::compile(&conf).unwrap();
        r.client(&vars(h, None, peer), 5000)
            .map(|(ip, port)| format!("{ip} {port}"))
    }

    #[test]
    fn parses_addresses_with_and_without_ports() {
        let p = |s| parse_addr(s).map(|(ip, port)| (ip.to_string(), port));
        assert_eq!(p("1.2.3.4"), Some(("1.2.3.4".into(), None)));
        assert_eq!(p(" 1.2.3.4:80 "), Some(("1.2.3.4".into(), Some(80))));
        assert_eq!(p("::1"), Some(("::1".into(), None)));
        assert_eq!(p("[::1]"), Some(("::1".into(), None)));
        assert_eq!(
            p("[2001:db8::1]:8443"),
            Some(("2001:db8::1".into(), Some(8443)))
        );
        assert_eq!(p("::ffff:10.0.0.1"), Some(("10.0.0.1".into(), None)));
        for bad in [
            "",
            "x",
            "1.2.3",
            "1.2.3.4:0",
            "1.2.3.4:65536",
            "1.2.3.4:",
            "1.2.3.4:x",
            "[::1",
            "[::1]x",
            "[1.2.3.4]:80x",
            "1.2.3.4, 5.6.7.8",
            "fe80::1%eth0",
            "example.com:80",
            "::1:+80",
        ] {
            assert_eq!(parse_addr(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_trusted_peer_may_set_the_client() {
        let conf =
            json!({"source": "http_x_forwarded_for", "trusted_addresses": ["127.0.0.0/8", "::1"]});
        let h = headers(&[("x-forwarded-for", "9.9.9.9, 1.1.1.1")]);
        assert_eq!(
            client(conf.clone(), &h, "127.0.0.1").as_deref(),
            Some("1.1.1.1 5000")
        );
        assert_eq!(
            client(conf.clone(), &h, "::1").as_deref(),
            Some("1.1.1.1 5000")
        );
        assert_eq!(client(conf.clone(), &h, "10.0.0.1"), None);
        // No trusted_addresses: any peer (APISIX's default).
        assert_eq!(
            client(json!({"source": "http_x_forwarded_for"}), &h, "10.0.0.1").as_deref(),
            Some("1.1.1.1 5000")
        );
        // No header, or garbage as its last entry: keep the peer.
        assert_eq!(client(conf.clone(), &HeaderMap::new(), "127.0.0.1"), None);
        let junk = headers(&[("x-forwarded-for", "1.1.1.1, <script>")]);
        assert_eq!(client(conf, &junk, "127.0.0.1"), None);
    }

    #[test]
    fn recursive_takes_the_rightmost_untrusted_address() {
        let base = json!({"source": "http_x_forwarded_for", "trusted_addresses": ["127.0.0.1", "10.0.0.0/8"]});
        let mut rec = base.clone();
        rec["recursive"] = json!(true);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.1.1.1,10.2.2.2")]);
        assert_eq!(
            client(rec.clone(), &h, "127.0.0.1").as_deref(),
            Some("5.5.5.5 5000")
        );
        assert_eq!(
            client(base.clone(), &h, "127.0.0.1").as_deref(),
            Some("10.2.2.2 5000")
        );
        // All trusted: the left-most.
        let all = headers(&[("x-forwarded-for", "10.0.0.3 , 10.0.0.2, 127.0.0.1")]);
        assert_eq!(
            client(rec.clone(), &all, "127.0.0.1").as_deref(),
            Some("10.0.0.3 5000")
        );
        // Several header lines are one list; empty entries are skipped.
        let lines = headers(&[
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-for", ",10.0.0.9,"),
        ]);
        assert_eq!(
            client(rec.clone(), &lines, "127.0.0.1").as_deref(),
            Some("7.7.7.7 5000")
        );
        assert_eq!(
            client(base, &lines, "127.0.0.1").as_deref(),
            Some("10.0.0.9 5000")
        );
        // Garbage stops the walk at the last good (trusted) address.
        let junk = headers(&[("x-forwarded-for", "1.1.1.1, junk, 10.0.0.4")]);
        assert_eq!(
            client(rec.clone(), &junk, "127.0.0.1").as_deref(),
            Some("10.0.0.4 5000")
        );
        // Without trusted_addresses, recursive has nothing to walk past: the last entry.
        let h2 = headers(&[("x-forwarded-for", "1.1.1.1, 10.0.0.4")]);
        let open = json!({"source": "http_x_forwarded_for", "recursive": true});
        assert_eq!(
            client(open, &h2, "8.8.8.8").as_deref(),
            Some("10.0.0.4 5000")
        );
    }

    #[test]
    fn other_headers_vars_ports_and_ipv6() {
        let conf = json!({"source": "http_x_real_ip", "trusted_addresses": ["::1/128"]});
        let h = headers(&[("x-real-ip", "[2001:db8::7]:4321")]);
        assert_eq!(
            client(conf.clone(), &h, "::1").as_deref(),
            Some("2001:db8::7 4321")
        );
        let two = headers(&[("x-real-ip", "1.1.1.1"), ("x-real-ip", "2.2.2.2")]);
        assert_eq!(client(conf.clone(), &two, "::1"), None);
        let list = headers(&[("x-real-ip", "1.1.1.1, 2.2.2.2")]);
        assert_eq!(client(conf, &list, "::1"), None);
        let r = RealIp::compile(&json!({"source": "arg_realip"})).unwrap();
        let empty = HeaderMap::new();
        let got = r.client(&vars(&empty, Some("a=1&realip=3.3.3.3:81"), "127.0.0.1"), 9);
        assert_eq!(got, Some(("3.3.3.3".parse().unwrap(), 81)));
        assert_eq!(r.client(&vars(&empty, Some("a=1"), "127.0.0.1"), 9), None);
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |v| RealIp::compile(&v).err().unwrap();
        assert!(err(json!({})).contains("source"));
        assert!(err(json!({"source": ""})).contains("source"));
        assert!(err(json!({"source": "x", "trusted_addresses": []})).contains("trusted_addresses"));
        let e = err(json!({"source": "x", "trusted_addresses": ["10.0.0.0/33"]}));
        assert!(
            e.starts_with("trusted_addresses") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        assert!(err(json!({"source": "x", "nope": 1})).contains("nope"));
    }
}
