//! A benchmark target: a plain `http://host[:port]/path?query` URL (the bench speaks HTTP/1.1 and h2c;
//! TLS would measure the handshake library as much as the server, so it is left out).
use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// `host[:port]` as written in the URL: the Host header / h2 `:authority`.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "{url}: unsupported scheme {scheme:?} (only http:// — HTTP/1.1 or h2c)"
                ))
            }
            None => {
                return Err(format!(
                    "{url}: not a URL (expected http://HOST[:PORT]/PATH)"
                ))
            }
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: missing or unsupported host"));
        }
        let host_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else if authority.starts_with('[') || authority.matches(':').count() == 1 {
            authority.to_string()
        } else {
            return Err(format!("{url}: write IPv6 addresses in brackets"));
        };
        let addr = host_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {authority} resolves to no address"))?;
        Ok(Target {
            url: url.to_string(),
            authority: authority.to_string(),
            path,
            addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_path() {
        let t = Target::parse("http://127.0.0.1:8080/a/b?x=1").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/a/b?x=1");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn defaults_port_and_path() {
        let t = Target::parse("http://127.0.0.1").unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(t.addr.port(), 80);
        let t = Target::parse("http://[::1]:81?q").unwrap();
        assert_eq!(t.path, "/?q");
        assert_eq!(t.addr, "[::1]:81".parse().unwrap());
    }

    #[test]
    fn refuses_other_schemes_and_garbage() {
        assert!(Target::parse("https://x/")
            .unwrap_err()
            .contains("only http://"));
        assert!(Target::parse("localhost:80")
            .unwrap_err()
            .contains("not a URL"));
        assert!(Target::parse("http:///x").is_err());
    }
}
