//! Request variables in APISIX/nginx naming (`arg_x`, `http_x_y`, `cookie_x`, `uri`, `host`,
//! `remote_addr`, `request_method`, `scheme`), read lazily from the request being routed.
//!
//! Here, next to the [`VarSource`] trait it implements, rather than with the proxy: the router's
//! `vars` expressions, the proxy (routing, chash) and the native plugins (limiter keys, real-ip's
//! source) all read them, and the plugins sit below the proxy (docs/architecture.md, "The Rust
//! core").
use super::VarSource;
use http::HeaderMap;
use std::borrow::Cow;
use std::net::IpAddr;

pub struct ReqVars<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub path: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub remote: IpAddr,
    pub scheme: &'a str,
    pub consumer: Option<&'a str>,
}

/// Decode `application/x-www-form-urlencoded` text (`+` is a space).
pub fn form_decode(s: &str) -> String {
    let replaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&replaced)
        .decode_utf8_lossy()
        .into_owned()
}

pub fn query_arg<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key_matches = if k.contains('%') || k.contains('+') {
            form_decode(k) == name
        } else {
            k == name
        };
        if key_matches {
            return Some(if v.contains('%') || v.contains('+') {
                Cow::Owned(form_decode(v))
            } else {
                Cow::Borrowed(v)
            });
        }
    }
    None
}

pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for part in s.split(';') {
            if let Some((k, v)) = part.trim().split_once('=') {
                if k == name {
                    return Some(v);
                }
            }
        }
    }
    None
}

fn header<'h>(headers: &'h HeaderMap, var_suffix: &str) -> Option<Cow<'h, str>> {
    let name: Cow<'_, str> =
        if var_suffix.contains('_') || var_suffix.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(var_suffix.replace('_', "-").to_ascii_lowercase())
        } else {
            Cow::Borrowed(var_suffix)
        };
    headers
        .get(name.as_ref())
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
}

impl VarSource for ReqVars<'_> {
    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(a) = name.strip_prefix("arg_") {
            return self.query.and_then(|q| query_arg(q, a));
        }
        if let Some(h) = name.strip_prefix("http_") {
            return header(self.headers, h);
        }
        if let Some(c) = name.strip_prefix("cookie_") {
            return cookie(self.headers, c).map(Cow::Borrowed);
        }
        match name {
            "uri" => Some(Cow::Borrowed(self.path)),
            "host" => Some(Cow::Borrowed(self.host)),
            "remote_addr" => Some(Cow::Owned(crate::http1::ip_string(self.remote))),
            "request_method" => Some(Cow::Borrowed(self.method)),
            "scheme" => Some(Cow::Borrowed(self.scheme)),
            "args" | "query_string" => self.query.map(Cow::Borrowed),
            "request_uri" => Some(match self.query {
                Some(q) => Cow::Owned(format!("{}?{}", self.path, q)),
                None => Cow::Borrowed(self.path),
            }),
            "consumer_name" => self.consumer.map(Cow::Borrowed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vars() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k1".parse().unwrap());
        h.insert("cookie", "a=1; sid=xyz".parse().unwrap());
        let v = ReqVars {
            headers: &h,
            query: Some("name=j%20s&x=1+2"),
            path: "/p",
            host: "ex.com",
            method: "GET",
            remote: "10.0.0.1".parse().unwrap(),
            scheme: "http",
            consumer: Some("jack"),
        };
        assert_eq!(v.var("arg_name").as_deref(), Some("j s"));
        assert_eq!(v.var("arg_x").as_deref(), Some("1 2"));
        assert_eq!(v.var("arg_missing"), None);
        assert_eq!(v.var("http_x_api_key").as_deref(), Some("k1"));
        assert_eq!(v.var("cookie_sid").as_deref(), Some("xyz"));
        assert_eq!(v.var("remote_addr").as_deref(), Some("10.0.0.1"));
        assert_eq!(v.var("uri").as_deref(), Some("/p"));
        assert_eq!(v.var("request_uri").as_deref(), Some("/p?name=j%20s&x=1+2"));
        assert_eq!(v.var("consumer_name").as_deref(), Some("jack"));
    }
}
