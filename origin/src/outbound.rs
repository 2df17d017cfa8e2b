//! Outgoing HTTP to URLs that users chose — push services, the push proxy, apps' webhooks and
//! slash commands — that never reaches an internal address unless configured to (ARCHITECTURE
//! §7): without this check anyone who may register a URL could make the origin call its own
//! network (SSRF). Hosts are resolved by [`PublicOnly`], which drops loopback, private,
//! link-local and other non-public addresses — at connection time, so a name that resolves
//! differently later (DNS rebinding) is checked again — and URLs with an address for a host are
//! checked by [`check_url`]. An [`Allow`] lets through what an operator allowed: every internal
//! address, or only some networks (`apps.allow_networks = ["127.0.0.1/32"]`). Redirects are
//! never followed, and every request has a deadline; answers' bodies are read up to a cap.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{
        connect::{dns::Name, HttpConnector},
        Client,
    },
    rt::TokioExecutor,
};
use url::Url;

/// Whether `ip` is an address of the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier-grade NAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || ip.to_ipv4().is_some_and(|v4| !is_public_v4(v4)))
}

/// Which internal addresses outgoing requests may reach besides the public internet.
#[derive(Clone, Debug, Default)]
pub struct Allow {
    /// Every one of them.
    pub internal: bool,
    /// These networks.
    pub networks: Vec<ipnet::IpNet>,
}

impl From<bool> for Allow {
    fn from(internal: bool) -> Allow {
        Allow { internal, networks: Vec::new() }
    }
}

impl Allow {
    /// Every internal address when `internal`, else the networks of `cidrs` (e.g.
    /// `127.0.0.1/32`); an entry that is not a network is an error naming it.
    pub fn parse(internal: bool, cidrs: &[String]) -> Result<Allow, String> {
        let networks = cidrs
            .iter()
            .map(|c| c.parse::<ipnet::IpNet>().map_err(|_| format!("{c:?} is not a network like 127.0.0.1/32")))
            .collect::<Result<_, _>>()?;
        Ok(Allow { internal, networks })
    }

    /// Whether a request may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.internal || is_public(ip) || self.networks.iter().any(|n| n.contains(&ip))
    }

    /// Whether plain `http` is allowed: only towards internal addresses an operator allowed.
    fn http(&self) -> bool {
        self.internal || !self.networks.is_empty()
    }
}

/// Checks a URL the origin is asked to call: `https` (or `http` when internal addresses are
/// allowed, for a local test or a service inside the network), no credentials, and a host
/// that is not itself an internal address `allow` does not let through.
pub fn check_url(raw: &str, allow: &Allow) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|_| "not a valid URL".to_string())?;
    match url.scheme() {
        "https" => {}
        "http" if allow.http() => {}
        _ => return Err("the URL must be https".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry credentials".into());
    }
    let host = url.host().ok_or_else(|| "the URL has no host".to_string())?;
    let literal = match host {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") => {
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        url::Host::Domain(_) => None,
    };
    if let Some(ip) = literal {
        if !allow.permits(ip) {
            return Err("the URL points to an internal address".into());
        }
    }
    Ok(url)
}

/// A resolver that answers only public addresses, and the internal ones [`Allow`] lets through.
#[derive(Clone, Debug)]
pub struct PublicOnly {
    /// What else it answers.
    pub allow: Arc<Allow>,
}

impl PublicOnly {
    /// The addresses of `host` this resolver lets a connection use.
    pub async fn lookup(&self, host: &str) -> std::io::Result<Vec<SocketAddr>> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        let kept: Vec<SocketAddr> = found.into_iter().filter(|a| self.allow.permits(a.ip())).collect();
        if kept.is_empty() {
            return Err(std::io::Error::other(format!("{host} resolves to no public address")));
        }
        Ok(kept)
    }
}

type Lookup = Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for PublicOnly {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Lookup;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Lookup {
        let resolver = self.clone();
        Box::pin(async move { Ok(resolver.lookup(name.as_str()).await?.into_iter()) })
    }
}

/// The HTTPS client of outgoing requests: HTTP/1.1 over rustls (ring, the platform's roots),
/// connections kept alive per host, no redirects followed, a deadline per request.
#[derive(Clone)]
pub struct Outbound {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector<PublicOnly>>, Full<Bytes>>,
    timeout: Duration,
    allow: Arc<Allow>,
}

impl Outbound {
    /// A client that reaches internal addresses only as `allow` says.
    pub fn new(allow: impl Into<Allow>, timeout: Duration) -> Result<Outbound, String> {
        let allow = Arc::new(allow.into());
        let mut http = HttpConnector::new_with_resolver(PublicOnly { allow: allow.clone() });
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let native = hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone());
        let builder = match native {
            Ok(builder) => builder,
            // A machine without CA certificates (a minimal container) still starts: pushes to
            // HTTPS services fail, are retried and recorded, and the log says why.
            Err(e) => {
                tracing::warn!(error = %e, "no CA certificates found: notifications to HTTPS endpoints will fail \
                    (install the system's CA certificates, e.g. the ca-certificates package)");
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS setup: {e}"))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
            }
        };
        let https = builder.https_or_http().enable_http1().wrap_connector(http);
        Ok(Outbound { client: Client::builder(TokioExecutor::new()).build(https), timeout, allow })
    }

    /// POSTs `body` with `headers` to `url` (checked again by [`check_url`]); answers the
    /// status, or why there was none.
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Result<u16, String> {
        self.post_for(url, headers, body, 0).await.map(|(status, _)| status)
    }

    /// [`Outbound::post`], answering also the first `keep` bytes of the answer's body (a longer
    /// body is cut there, and not read further).
    pub async fn post_for(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        keep: usize,
    ) -> Result<(u16, Vec<u8>), String> {
        let url = check_url(url, &self.allow)?;
        let mut request = hyper::Request::post(url.as_str())
            .header("user-agent", concat!("selvage/", env!("CARGO_PKG_VERSION")))
            .header("content-length", body.len().to_string());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| format!("bad request: {e}"))?;
        let answer = async {
            let response = self.client.request(request).await.map_err(|e| format!("no answer: {e}"))?;
            let status = response.status().as_u16();
            // Read the body so the connection can be reused, keeping at most `keep` bytes; past
            // that the connection is dropped rather than read on (its size is not trusted).
            let mut body = response.into_body();
            let mut kept = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    if kept.len() + data.len() > keep.max(64 * 1024) {
                        kept.extend_from_slice(&data[..keep.saturating_sub(kept.len()).min(data.len())]);
                        break;
                    }
                    kept.extend_from_slice(data);
                }
            }
            kept.truncate(keep);
            Ok((status, kept))
        };
        tokio::time::timeout(self.timeout, answer).await.map_err(|_| "no answer within the deadline".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        for bad in [
            "https://127.0.0.1/push",
            "https://10.1.2.3/",
            "https://192.168.0.1/",
            "https://172.16.5.4/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://localhost:8080/",
            "https://push.localhost/",
        ] {
            assert!(check_url(bad, &false.into()).is_err(), "{bad}");
            assert!(check_url(bad, &true.into()).is_ok(), "{bad} allowed when configured");
        }
        assert!(check_url("https://fcm.googleapis.com/fcm/send/abc", &false.into()).is_ok());
        assert!(check_url("https://8.8.8.8/", &false.into()).is_ok());
        assert!(check_url("http://push.example.com/", &false.into()).unwrap_err().contains("https"));
        assert!(check_url("ftp://push.example.com/", &true.into()).is_err());
        assert!(check_url("https://user:pw@push.example.com/", &false.into()).unwrap_err().contains("credentials"));
        assert!(check_url("not a url", &false.into()).is_err());
    }

    #[tokio::test]
    async fn names_that_resolve_internally_are_refused_at_connection() {
        let refused = PublicOnly { allow: Arc::new(false.into()) }.lookup("localhost").await;
        assert!(refused.unwrap_err().to_string().contains("no public address"));
        let allowed = PublicOnly { allow: Arc::new(true.into()) }.lookup("localhost").await.unwrap();
        assert!(allowed.iter().all(|a| a.ip().is_loopback()));
        // A request is checked again when it is made.
        let outbound = Outbound::new(false, Duration::from_secs(2)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let refused = outbound.post(&format!("https://127.0.0.1:{port}/"), &[], Vec::new()).await;
        assert!(refused.unwrap_err().contains("internal"));
    }

    #[test]
    fn an_allowed_network_lets_through_only_itself() {
        let allow = Allow::parse(false, &["127.0.0.1/32".to_string()]).unwrap();
        assert!(check_url("http://127.0.0.1:8080/hook", &allow).is_ok());
        assert!(check_url("http://[::ffff:127.0.0.1]:8080/hook", &allow).is_ok());
        for bad in
            ["http://127.0.0.2/", "https://169.254.169.254/latest/meta-data/", "https://10.0.0.1/", "https://[::1]/"]
        {
            assert!(check_url(bad, &allow).is_err(), "{bad}");
        }
        assert!(Allow::parse(false, &["not a network".to_string()]).unwrap_err().contains("not a network"));
    }
}
