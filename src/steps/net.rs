//! The network guard: which addresses a download may reach, and the HTTP client that enforces it.
//!
//! A service that fetches user-supplied URLs is an SSRF target. Every address a host name resolves
//! to is checked by narra's own DNS resolver at connect time (so DNS rebinding cannot slip past a
//! pre-check), IP literals (which never reach a resolver) are checked before every request, and the
//! download step follows redirects itself so that every hop is checked too. Proxies from the
//! environment are ignored: a proxy connects on our behalf, past the guard. Only a proxy named in
//! narra's own configuration is used, and a name is resolved and checked before a request for it
//! goes there. `--allow-private-network` never opens the link-local ranges and the cloud metadata
//! addresses (`metadata_reason`); only a host named in the allowed hosts reaches them. Tools that
//! make their own requests get the same guard through `steps::egress`. This module never fetches
//! anything itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::{ErrorClass, StepError};

/// Who may be reached: by default only public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Allow loopback, private and other non-public addresses (on-premises sources, tests), but
    /// never link-local or cloud metadata addresses (`metadata_reason`).
    /// `--allow-private-network` or `NARRA_ALLOW_PRIVATE_NETWORK=1`.
    pub allow_private_network: bool,
    /// Hosts (exact names, lower case) whose addresses are allowed even when private.
    pub allowed_hosts: Vec<String>,
    /// An egress proxy from narra's own configuration (`NARRA_PROXY`), never from `HTTP_PROXY`.
    pub proxy: Option<String>,
}

impl NetworkPolicy {
    /// The policy from the environment: `NARRA_ALLOW_PRIVATE_NETWORK=1`, `NARRA_ALLOWED_HOSTS=a,b`,
    /// `NARRA_PROXY=http://proxy:3128`.
    pub fn from_env() -> NetworkPolicy {
        NetworkPolicy::from_env_named(
            "NARRA_ALLOW_PRIVATE_NETWORK",
            "NARRA_ALLOWED_HOSTS",
            Some("NARRA_PROXY"),
        )
    }

    /// A policy from the variables named (the webhooks' have names of their own).
    pub fn from_env_named(
        allow_private_network: &str,
        allowed_hosts: &str,
        proxy: Option<&str>,
    ) -> NetworkPolicy {
        let flag = std::env::var(allow_private_network).unwrap_or_default();
        NetworkPolicy {
            allow_private_network: matches!(flag.trim(), "1" | "true" | "yes"),
            allowed_hosts: std::env::var(allowed_hosts)
                .unwrap_or_default()
                .split(',')
                .map(|host| host.trim().to_ascii_lowercase())
                .filter(|host| !host.is_empty())
                .collect(),
            proxy: proxy
                .and_then(|name| std::env::var(name).ok())
                .filter(|proxy| !proxy.trim().is_empty()),
        }
    }

    fn host_named(&self, host: &str) -> bool {
        self.allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(host.trim_end_matches('.')))
    }

    /// Checks one address for `host`: `Err` names why it is refused.
    ///
    /// A host named in the allowed hosts reaches any address. `allow_private_network` opens the
    /// private ranges but never the link-local ranges and the cloud metadata addresses: an
    /// on-premises source never needs them, and one open redirect would otherwise read the
    /// machine's cloud credentials.
    pub fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), StepError> {
        if self.host_named(host) {
            return Ok(());
        }
        if let Some(reason) = metadata_reason(ip) {
            return Err(StepError::new(
                ErrorClass::ForbiddenAddress,
                format!(
                    "{host} resolves to {ip} ({reason}); refused even with --allow-private-network (name the host in NARRA_ALLOWED_HOSTS if it is really a source)"
                ),
            ));
        }
        if self.allow_private_network {
            return Ok(());
        }
        match forbidden_reason(ip) {
            Some(reason) => Err(StepError::new(
                ErrorClass::ForbiddenAddress,
                format!(
                    "{host} resolves to {ip} ({reason}); private networks are not allowed (use --allow-private-network or NARRA_ALLOWED_HOSTS for trusted sources)"
                ),
            )),
            None => Ok(()),
        }
    }

    /// Checks a URL before a request: scheme, and the host when it is an IP literal.
    pub fn check_url(&self, url: &url::Url) -> Result<(), StepError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(StepError::new(
                ErrorClass::UnsupportedSource,
                format!(
                    "scheme {:?} is not allowed for downloads (http and https only)",
                    url.scheme()
                ),
            ));
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_address(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_address(&ip.to_string(), IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(StepError::new(
                ErrorClass::UnsupportedSource,
                format!(
                    "URL {} has no host",
                    crate::model::redact::redact_url(url.as_str())
                ),
            )),
        }
    }
}

impl NetworkPolicy {
    /// With `NARRA_PROXY` configured, resolves a URL's host name here and checks its addresses:
    /// the proxy resolves the name itself, so the resolver that guards direct connections never
    /// sees it. The proxy may still get another answer; only a proxy that refuses private
    /// addresses itself closes that gap. Without a proxy this does nothing (the resolver checks
    /// at connect time).
    pub async fn check_name_before_proxy(&self, url: &url::Url) -> Result<(), StepError> {
        let (Some(_), Some(url::Host::Domain(name))) = (&self.proxy, url.host()) else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let resolved = tokio::net::lookup_host((name, port))
            .await
            .map(Iterator::collect);
        self.checked_addresses(name, resolved).map(|_| ())
    }

    /// The addresses a lookup of `host` gave, every one checked: what a caller that resolves a
    /// name itself (the check before `NARRA_PROXY`, the egress proxy) connects to, or why not. A
    /// failed or empty lookup is a `network_error`.
    pub fn checked_addresses(
        &self,
        host: &str,
        resolved: std::io::Result<Vec<SocketAddr>>,
    ) -> Result<Vec<SocketAddr>, StepError> {
        let addresses = resolved.map_err(|error| {
            StepError::new(
                ErrorClass::NetworkError,
                format!("cannot resolve {host}: {error}"),
            )
        })?;
        if addresses.is_empty() {
            return Err(StepError::new(
                ErrorClass::NetworkError,
                format!("{host} has no address"),
            ));
        }
        for address in &addresses {
            self.check_address(host, address.ip())?;
        }
        Ok(addresses)
    }
}

/// Why an address is not public, or `None` for a public unicast address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(mapped) = ip.to_ipv4_mapped() {
                return forbidden_v4(mapped).map(|_| "an IPv4-mapped non-public address");
            }
            forbidden_v6(ip)
        }
    }
}

/// Addresses refused whatever `allow_private_network` says: link-local ranges (where the cloud
/// metadata services live) and the metadata addresses outside them. IPv4-mapped and NAT64 spellings
/// are judged by the IPv4 address they carry.
pub fn metadata_reason(ip: IpAddr) -> Option<&'static str> {
    let v4 = match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped().or_else(|| nat64_embedded(ip)),
    };
    if let Some(ip) = v4 {
        return if ip.is_link_local() {
            Some("link-local, where cloud metadata services answer")
        } else if METADATA_V4.contains(&ip) {
            Some("a cloud metadata address")
        } else {
            None
        };
    }
    let IpAddr::V6(ip) = ip else { return None };
    if (ip.segments()[0] & 0xffc0) == 0xfe80 {
        Some("link-local, where cloud metadata services answer")
    } else if METADATA_V6.contains(&ip) {
        Some("a cloud metadata address")
    } else {
        None
    }
}

/// Cloud metadata and platform addresses outside 169.254.0.0/16: Alibaba Cloud's, Oracle Cloud's
/// legacy one, Azure's wire server.
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
    Ipv4Addr::new(168, 63, 129, 16),
];

/// AWS's IPv6 metadata address (Nitro instances).
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];

/// The IPv4 address a NAT64 address (64:ff9b::/32) embeds in its last 32 bits.
fn nat64_embedded(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = ip.segments();
    (segments[0] == 0x64 && segments[1] == 0xff9b).then(|| {
        Ipv4Addr::new(
            (segments[6] >> 8) as u8,
            segments[6] as u8,
            (segments[7] >> 8) as u8,
            segments[7] as u8,
        )
    })
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let octets = ip.octets();
    if ip.is_unspecified() || octets[0] == 0 {
        Some("unspecified / this network")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private network")
    } else if ip.is_link_local() {
        Some("link-local, including the cloud metadata address")
    } else if octets[0] == 100 && (octets[1] & 0xc0) == 64 {
        Some("carrier-grade NAT")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || octets[0] >= 240 {
        Some("reserved")
    } else if octets[0] == 192 && octets[1] == 0 && octets[2] == 0 {
        Some("IETF protocol assignments")
    } else if (octets[0] == 198 && (octets[1] & 0xfe) == 18)
        || (octets[0] == 192 && octets[1] == 0 && octets[2] == 2)
        || (octets[0] == 198 && octets[1] == 51 && octets[2] == 100)
        || (octets[0] == 203 && octets[1] == 0 && octets[2] == 113)
    {
        Some("benchmarking or documentation range")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        Some("unique local address")
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (segments[0] & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if let Some(embedded) = nat64_embedded(ip) {
        // NAT64 embeds an IPv4 address: judge that address.
        forbidden_v4(embedded).map(|_| "a NAT64-embedded non-public address")
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        Some("documentation range")
    } else if segments[..6] == [0, 0, 0, 0, 0, 0] {
        Some("IPv4-compatible address")
    } else {
        None
    }
}

/// A DNS resolver that refuses names resolving to forbidden addresses. It runs at connect time, so
/// the address checked is the address connected to.
struct GuardedResolver {
    policy: Arc<NetworkPolicy>,
}

/// The error a refused resolution carries through reqwest, found again by `is_forbidden`.
#[derive(Debug)]
pub struct ForbiddenAddressError(pub String);

impl std::fmt::Display for ForbiddenAddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ForbiddenAddressError {}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // A failed lookup stays the resolver's own error, for reqwest to classify.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            match policy.checked_addresses(&host, Ok(resolved)) {
                Ok(addresses) => Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs),
                Err(error) if error.class == ErrorClass::ForbiddenAddress => {
                    Err(Box::new(ForbiddenAddressError(error.message))
                        as Box<dyn std::error::Error + Send + Sync>)
                }
                Err(error) => Err(error.message.into()),
            }
        })
    }
}

/// If a reqwest error was caused by the guard, its message.
pub fn forbidden_cause(error: &reqwest::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(inner) = cause {
        if let Some(forbidden) = inner.downcast_ref::<ForbiddenAddressError>() {
            return Some(forbidden.0.clone());
        }
        cause = inner.source();
    }
    None
}

/// The guarded clients of one process by connect timeout and user agent, each built once: one
/// connection pool per workflow's download limits, one for webhook notices (whose user agent is
/// its own).
#[derive(Clone, Default)]
pub struct HttpClients(
    Arc<std::sync::Mutex<std::collections::HashMap<(u64, String), reqwest::Client>>>,
);

impl HttpClients {
    /// The client [`guarded_client`] builds for `policy`, `connect_timeout_s` and `user_agent`.
    pub fn get(
        &self,
        policy: &NetworkPolicy,
        connect_timeout_s: u64,
        user_agent: &str,
    ) -> Result<reqwest::Client, StepError> {
        let key = (connect_timeout_s, user_agent.to_string());
        let mut clients = self.0.lock().expect("the client cache is never poisoned");
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = guarded_client(policy, Duration::from_secs(connect_timeout_s), user_agent)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The download client: guarded resolver, no redirects (the step follows them itself, checking
/// each hop), no proxy from the environment.
pub fn guarded_client(
    policy: &NetworkPolicy,
    connect_timeout: Duration,
    user_agent: &str,
) -> Result<reqwest::Client, StepError> {
    let policy = Arc::new(policy.clone());
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(user_agent.to_string())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(GuardedResolver {
            policy: policy.clone(),
        });
    if let Some(proxy) = &policy.proxy {
        let proxy = reqwest::Proxy::all(proxy.as_str()).map_err(|error| {
            StepError::new(
                ErrorClass::Internal,
                format!("invalid NARRA_PROXY: {error}"),
            )
        })?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|error| {
        StepError::new(
            ErrorClass::Internal,
            format!("cannot build the HTTP client: {error}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        forbidden_reason(text.parse().unwrap()).is_some()
    }

    /// The class of `policy`'s refusal of `url`.
    fn refusal_of_url(policy: &NetworkPolicy, url: &str) -> ErrorClass {
        let url = url::Url::parse(url).unwrap();
        policy.check_url(&url).unwrap_err().class
    }

    /// The default policy under `--allow-private-network`.
    fn private_networks_allowed() -> NetworkPolicy {
        NetworkPolicy {
            allow_private_network: true,
            ..NetworkPolicy::default()
        }
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(refused(address), "{address} must be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for address in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(address), "{address} must be allowed");
        }
    }

    #[test]
    fn ip_literals_are_checked_without_dns() {
        let policy = NetworkPolicy::default();
        assert_eq!(
            refusal_of_url(&policy, "http://169.254.169.254/latest/meta-data/"),
            ErrorClass::ForbiddenAddress
        );
        let mapped_loopback = "http://[::ffff:7f00:1]/";
        assert_eq!(
            refusal_of_url(&policy, mapped_loopback),
            ErrorClass::ForbiddenAddress
        );
        let url = url::Url::parse(mapped_loopback).unwrap();
        assert!(private_networks_allowed().check_url(&url).is_ok());
    }

    #[test]
    fn allowed_hosts_are_exact_names() {
        let policy = NetworkPolicy {
            allowed_hosts: vec!["media.internal".into()],
            ..NetworkPolicy::default()
        };
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(policy.check_address("media.internal", ip).is_ok());
        assert!(policy.check_address("MEDIA.internal.", ip).is_ok());
        assert!(policy.check_address("other.internal", ip).is_err());
    }

    // Guards the metadata rule: under --allow-private-network the link-local ranges and the cloud
    // metadata addresses stay refused, in every spelling, for the downloads' and the webhooks'
    // policies alike (the same type); only a host named in the allowed hosts reaches them.
    #[test]
    fn metadata_addresses_stay_refused_when_private_networks_are_allowed() {
        let private = private_networks_allowed();
        for address in [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.1.1",
            "100.100.100.200",
            "192.0.0.192",
            "168.63.129.16",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            let error = private.check_address("metadata.internal", ip).unwrap_err();
            assert_eq!(error.class, ErrorClass::ForbiddenAddress, "{address}");
            assert!(
                error.message.contains("even with --allow-private-network"),
                "{address}: {}",
                error.message
            );
            assert!(
                NetworkPolicy::default()
                    .check_address("metadata.internal", ip)
                    .is_err(),
                "{address} is refused by default too"
            );
        }
        for address in [
            "10.0.0.5",
            "192.168.1.1",
            "127.0.0.1",
            "fd12:3456::1",
            "::1",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert!(
                private.check_address("media.internal", ip).is_ok(),
                "{address} is private, and allowed"
            );
        }
        assert_eq!(
            refusal_of_url(&private, "http://[fd00:ec2::254]/latest/meta-data/"),
            ErrorClass::ForbiddenAddress
        );
        let named = NetworkPolicy {
            allowed_hosts: vec!["metadata.internal".into()],
            ..private_networks_allowed()
        };
        let ip: IpAddr = "169.254.169.254".parse().unwrap();
        assert!(named.check_address("metadata.internal", ip).is_ok());
        assert!(named.check_address("other.internal", ip).is_err());
    }

    #[test]
    fn only_http_and_https_are_fetched() {
        assert_eq!(
            refusal_of_url(&NetworkPolicy::default(), "gopher://example.com/"),
            ErrorClass::UnsupportedSource
        );
    }
}
