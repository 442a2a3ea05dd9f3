//! An upstream base URL (`http://` or `https://`, host, port, optional base path), parsed once
//! at start.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none); upstream paths are appended to it.
    pub base_path: String,
    /// The Host header value: `host` alone on the scheme's default port, else `host:port`.
    pub authority: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<UpstreamUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("upstream URL must start with http:// or https://: {url}"));
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(format!("upstream URL may not carry a query or fragment: {url}"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(hostport, default_port).map_err(|e| format!("{e}: {url}"))?;
        if host.is_empty() {
            return Err(format!("upstream URL has no host: {url}"));
        }
        let authority =
            if port == default_port { host_for_header(&host) } else { format!("{}:{port}", host_for_header(&host)) };
        Ok(UpstreamUrl { tls, host, port, base_path: path.trim_end_matches('/').to_string(), authority })
    }
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), &'static str> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let end = rest.find(']').ok_or("unclosed IPv6 literal")?;
        let host = rest[..end].to_string();
        let port = match &rest[end + 1..] {
            "" => default_port,
            p => p.strip_prefix(':').ok_or("bad port")?.parse().map_err(|_| "bad port")?,
        };
        return Ok((host, port));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_string(), port.parse().map_err(|_| "bad port")?)),
        None => Ok((hostport.to_string(), default_port)),
    }
}

fn host_for_header(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", if self.tls { "https" } else { "http" }, self.authority, self.base_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_give() {
        let u = UpstreamUrl::parse("https://api.openai.com").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str(), u.authority.as_str()),
            (true, "api.openai.com", 443, "", "api.openai.com")
        );
        let u = UpstreamUrl::parse("http://127.0.0.1:9000/prefix/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str(), u.authority.as_str()),
            (false, "127.0.0.1", 9000, "/prefix", "127.0.0.1:9000")
        );
        let u = UpstreamUrl::parse("http://[::1]:81").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.authority.as_str()), ("::1", 81, "[::1]:81"));
        assert_eq!(u.to_string(), "http://[::1]:81");
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in ["ftp://x", "api.openai.com", "http://", "http://x:port", "http://x/?a=1", "http://x:99999"] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
