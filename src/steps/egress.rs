//! The egress proxy: the only way out for tools that make their own requests (yt-dlp and whatever
//! it runs), so that every connection they open passes the network guard (`steps::net`).
//!
//! One proxy serves one job's tool runs: it listens on 127.0.0.1 on an ephemeral port and answers
//! only requests carrying its own random credential (`Proxy-Authorization: Basic`; anything else
//! gets a 407), so another local user cannot borrow it. For each `CONNECT host:port` and each
//! plain-HTTP request (`GET http://host/...`) it resolves the host at that moment through its
//! resolver (injectable, for tests), checks every address with the job's `NetworkPolicy` (IP
//! literals too, allowed hosts by name) and connects only to the addresses it checked, so a second
//! answer from a rebinding DNS server is checked again. A refusal is a 403 naming the reason, and
//! the first one is kept for the step to report as `forbidden_address`. With `NARRA_PROXY` set,
//! it checks the name first and then opens a `CONNECT <checked address>` tunnel through that
//! proxy.
//!
//! It never follows a redirect (the tool does, and every hop comes back through here), never
//! reads or keeps bodies, and never serves anyone but the credential's holder. Nor anyone of
//! another uid: the credential can show on a child's command line (yt-dlp's ffmpeg takes the proxy
//! as an option), which every local user can read, so a connection whose peer socket belongs to
//! another user (`/proc/net/tcp`, [`peer_uid`]) is closed before a byte is read.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::net::NetworkPolicy;
use super::{ErrorClass, StepError};

/// The most a request head may take before the proxy gives up on it.
const HEAD_BYTES_MAX: usize = 32 * 1024;

/// How long one connection to a checked address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// The most connections one job's proxy serves at once. yt-dlp and its ffmpeg open a few; a local
/// process that opens many (it needs no credential to connect) must not take the narra process's
/// file descriptors: past the cap, a connection is closed at once.
const CONNECTIONS_MAX: usize = 32;
/// How long the accept loop rests after an accept error (out of descriptors, say), so that an
/// error that repeats does not spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Turns a host name into addresses. The proxy asks at every request, so what it checks is what it
/// connects to.
pub trait Resolver: Send + Sync {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (getaddrinfo, on tokio's blocking pool).
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// A running egress proxy. Dropping it stops the listener and every connection it relays.
pub struct EgressProxy {
    addr: SocketAddr,
    credential: String,
    refusal: Arc<Mutex<Option<StepError>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it ends them all.
        self.task.abort();
    }
}

/// What one connection's task shares with the proxy.
struct Shared {
    policy: Arc<NetworkPolicy>,
    resolver: Arc<dyn Resolver>,
    /// `Basic <base64(narra:credential)>`, the only Proxy-Authorization accepted.
    authorization: String,
    refusal: Arc<Mutex<Option<StepError>>>,
}

impl EgressProxy {
    /// Starts a proxy on 127.0.0.1 with a fresh credential, applying `policy` through `resolver`.
    pub async fn start(
        policy: Arc<NetworkPolicy>,
        resolver: Arc<dyn Resolver>,
    ) -> Result<EgressProxy, StepError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|error| {
            StepError::new(
                ErrorClass::Internal,
                format!("cannot start the egress proxy on 127.0.0.1: {error}"),
            )
        })?;
        let addr = listener.local_addr().map_err(|error| {
            StepError::new(
                ErrorClass::Internal,
                format!("the egress proxy has no address: {error}"),
            )
        })?;
        let credential = random_credential()?;
        let refusal = Arc::new(Mutex::new(None));
        let shared = Arc::new(Shared {
            policy,
            resolver,
            authorization: format!("Basic {}", base64(format!("narra:{credential}").as_bytes())),
            refusal: refusal.clone(),
        });
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else {
                            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                            continue;
                        };
                        if connections.len() >= CONNECTIONS_MAX {
                            drop(stream);
                            continue;
                        }
                        if !peer_is_this_user(&stream) {
                            drop(stream);
                            continue;
                        }
                        connections.spawn(serve(stream, shared.clone()));
                    }
                    // Reap finished connections so the set does not grow with the job's requests.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(EgressProxy {
            addr,
            credential,
            refusal,
            task,
        })
    }

    /// The proxy URL for the tool, credential included: `http://narra:<credential>@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://narra:{}@{}", self.credential, self.addr)
    }

    /// The first request the proxy refused, if any: why the tool failed, when it did.
    pub fn refusal(&self) -> Option<StepError> {
        self.refusal.lock().expect("the refusal lock").clone()
    }
}

/// 32 random bytes from the kernel, in hex.
/// Whether the process at the other end of `stream` runs as this process's effective uid. A peer
/// whose uid cannot be read (no `/proc`) is let through to the credential check.
fn peer_is_this_user(stream: &TcpStream) -> bool {
    let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    // SAFETY: geteuid(2) only reads a process attribute and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    peer_uid(&table, peer, local).is_none_or(|uid| uid == own_uid)
}

/// The uid that owns the socket whose local address is `peer` and whose remote address is `local`
/// (the client's end of a connection to us), read from the text of `/proc/net/tcp`: addresses are
/// printed as the native-endian hex of the IPv4 address and the hex port, the uid is the eighth
/// column. `None` when no such socket is listed (or the peer is not IPv4).
pub fn peer_uid(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let hex = |address: SocketAddr| match address {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    };
    let (peer, local) = (hex(peer)?, hex(local)?);
    table.lines().skip(1).find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        match columns.as_slice() {
            [_, from, to, _, _, _, _, uid, ..] if *from == peer && *to == local => uid.parse().ok(),
            _ => None,
        }
    })
}

fn random_credential() -> Result<String, StepError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .map_err(|error| {
            StepError::new(
                ErrorClass::Internal,
                format!("cannot read /dev/urandom for the egress proxy's credential: {error}"),
            )
        })?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Standard base64 with padding (the credential is ASCII; no crate needed for this one use).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(char::from(
                    ALPHABET[(word >> (18 - 6 * index)) as usize & 63],
                ));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    /// `(name, value)` in order, as sent.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Reads a request head; returns it with the bytes read past it (the start of a body or of a
/// tunnelled stream).
async fn read_head(stream: &mut TcpStream) -> Option<(Head, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > HEAD_BYTES_MAX {
            return None;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let text = std::str::from_utf8(&buffer[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let rest = buffer[end + 4..].to_vec();
    Some((
        Head {
            method,
            target,
            headers,
        },
        rest,
    ))
}

/// Writes a short answer and closes the connection.
async fn answer(stream: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Serves one client connection: one CONNECT tunnel or one plain-HTTP request.
async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let Ok(Some((head, rest))) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await
    else {
        return;
    };
    let authorized = head.header("Proxy-Authorization").is_some_and(|value| {
        use subtle::ConstantTimeEq;
        bool::from(value.as_bytes().ct_eq(shared.authorization.as_bytes()))
    });
    if !authorized {
        answer(
            &mut client,
            "407 Proxy Authentication Required",
            "Proxy-Authenticate: Basic realm=\"narra\"\r\n",
            "narra's egress proxy needs its credential\n",
        )
        .await;
        return;
    }
    let connect = head.method.eq_ignore_ascii_case("CONNECT");
    let target = if connect {
        authority_target(&head.target)
    } else {
        absolute_target(&head.target)
    };
    let Some((host, port, path)) = target else {
        answer(
            &mut client,
            "400 Bad Request",
            "",
            "narra's egress proxy takes CONNECT host:port or an absolute http:// URL\n",
        )
        .await;
        return;
    };
    let addresses = match checked_addresses(&shared, &host, port).await {
        Ok(addresses) => addresses,
        Err(error) => {
            let reason = format!("{}\n", error.message);
            if error.class == ErrorClass::ForbiddenAddress {
                tracing::warn!(host = %host, "egress proxy refused: {}", error.message);
                shared
                    .refusal
                    .lock()
                    .expect("the refusal lock")
                    .get_or_insert(error);
                answer(&mut client, "403 Forbidden", "", &reason).await;
            } else {
                answer(&mut client, "502 Bad Gateway", "", &reason).await;
            }
            return;
        }
    };
    let mut upstream = match open(&shared.policy, &addresses).await {
        Ok(upstream) => upstream,
        Err(reason) => {
            answer(&mut client, "502 Bad Gateway", "", &format!("{reason}\n")).await;
            return;
        }
    };
    if connect {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        if upstream.write_all(&rest).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    // One request per connection: the origin gets this request's head and body and nothing after
    // them, and is asked to close after its answer; whatever else the client sends on this
    // connection (a second request its pool meant for another host) is never read, so it can
    // reach no host but the one checked, and the answer is relayed until the origin closes.
    let body_bytes: u64 = match head.header("Content-Length") {
        Some(length) => match length.trim().parse() {
            Ok(length) => length,
            Err(_) => {
                answer(
                    &mut client,
                    "400 Bad Request",
                    "",
                    "a malformed Content-Length\n",
                )
                .await;
                return;
            }
        },
        None => 0,
    };
    if head.header("Transfer-Encoding").is_some() {
        answer(
            &mut client,
            "411 Length Required",
            "",
            "narra's egress proxy relays request bodies with a Content-Length only\n",
        )
        .await;
        return;
    }
    let mut text = format!("{} {path} HTTP/1.1\r\n", head.method);
    for (name, value) in &head.headers {
        let hop_by_hop = [
            "proxy-authorization",
            "proxy-connection",
            "connection",
            "keep-alive",
        ]
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop));
        if !hop_by_hop {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    text.push_str("Connection: close\r\n\r\n");
    let body_in_rest = usize::try_from(body_bytes).map_or(rest.len(), |body| body.min(rest.len()));
    let mut forwarded = text.into_bytes();
    forwarded.extend_from_slice(&rest[..body_in_rest]);
    if upstream.write_all(&forwarded).await.is_err() {
        return;
    }
    let body_left = body_bytes.saturating_sub(u64::try_from(body_in_rest).unwrap_or(u64::MAX));
    if body_left > 0 {
        let mut body = (&mut client).take(body_left);
        if tokio::io::copy(&mut body, &mut upstream).await.is_err() {
            return;
        }
    }
    let _ = tokio::io::copy(&mut upstream, &mut client).await;
    let _ = client.shutdown().await;
}

/// `host:port` of a CONNECT target (`[v6]:port` for IPv6 literals).
fn authority_target(target: &str) -> Option<(String, u16, String)> {
    let url = url::Url::parse(&format!("http://{target}/")).ok()?;
    let port = url.port()?;
    Some((host_text(&url)?, port, String::new()))
}

/// Host, port and origin-form path of a plain-HTTP proxy request's absolute URL.
fn absolute_target(target: &str) -> Option<(String, u16, String)> {
    let url = url::Url::parse(target).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let mut path = url.path().to_string();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    Some((host_text(&url)?, url.port_or_known_default()?, path))
}

/// A URL's host as the guard names it: the name, or the address without brackets.
fn host_text(url: &url::Url) -> Option<String> {
    match url.host()? {
        url::Host::Domain(name) => Some(name.to_ascii_lowercase()),
        url::Host::Ipv4(ip) => Some(ip.to_string()),
        url::Host::Ipv6(ip) => Some(ip.to_string()),
    }
}

/// The addresses `host:port` resolves to now, every one of them allowed by the policy.
async fn checked_addresses(
    shared: &Shared,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, StepError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        shared.policy.check_address(host, ip)?;
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolved = shared.resolver.resolve(host, port).await;
    shared.policy.checked_addresses(host, resolved)
}

/// A connection to the first of `addresses` that answers, directly or through `NARRA_PROXY`.
async fn open(policy: &NetworkPolicy, addresses: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for address in addresses {
        let attempt = match &policy.proxy {
            None => tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                .await
                .map_err(|_| format!("connecting to {address} timed out"))
                .and_then(|result| {
                    result.map_err(|error| format!("cannot connect to {address}: {error}"))
                }),
            Some(proxy) => tunnel(proxy, *address).await,
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(reason) => last = reason,
        }
    }
    Err(last)
}

/// A `CONNECT` tunnel to `address` (the checked address, never the name, so the upstream proxy
/// cannot resolve it differently) through the configured upstream proxy.
async fn tunnel(proxy: &str, address: SocketAddr) -> Result<TcpStream, String> {
    let url = url::Url::parse(proxy).map_err(|error| format!("invalid NARRA_PROXY: {error}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| "NARRA_PROXY has no host".to_string())?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(3128);
    let mut stream =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| "connecting to NARRA_PROXY timed out".to_string())?
            .map_err(|error| format!("cannot connect to NARRA_PROXY: {error}"))?;
    let mut request = format!("CONNECT {address} HTTP/1.1\r\nHost: {address}\r\n");
    if !url.username().is_empty() {
        let user = percent_decoded(url.username());
        let password = percent_decoded(url.password().unwrap_or(""));
        request.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64(format!("{user}:{password}").as_bytes())
        ));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("NARRA_PROXY: {error}"))?;
    let (head, rest) = read_head(&mut stream)
        .await
        .ok_or_else(|| "NARRA_PROXY closed the tunnel".to_string())?;
    // `read_head` parses requests: on an answer, `method` is the version and `target` the status.
    if !head.target.starts_with('2') || !rest.is_empty() {
        return Err(format!(
            "NARRA_PROXY refused CONNECT {address}: {}",
            head.target
        ));
    }
    Ok(stream)
}

/// A user name or password from a URL, percent-decoded (`+` is kept: it is no space there).
fn percent_decoded(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A resolver that answers `first` once, then `then` for ever: a rebinding DNS server.
    struct Rebinding {
        calls: AtomicUsize,
        first: IpAddr,
        then: IpAddr,
    }

    impl Resolver for Rebinding {
        fn resolve(
            &self,
            _host: &str,
            port: u16,
        ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
            let ip = if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                self.first
            } else {
                self.then
            };
            Box::pin(async move { Ok(vec![SocketAddr::new(ip, port)]) })
        }
    }

    /// A resolver that answers 127.0.0.1 for every name.
    fn loopback_resolver() -> Arc<Rebinding> {
        Arc::new(Rebinding {
            calls: AtomicUsize::new(0),
            first: "127.0.0.1".parse().unwrap(),
            then: "127.0.0.1".parse().unwrap(),
        })
    }

    /// The `Proxy-Authorization` value `proxy` accepts.
    fn authorization(proxy: &EgressProxy) -> String {
        format!(
            "Basic {}",
            base64(format!("narra:{}", proxy.credential).as_bytes())
        )
    }

    /// An origin on `listener` answering every request `200 ok`, counting the connections.
    fn origin(listener: TcpListener) -> Arc<AtomicUsize> {
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = read_head(&mut stream).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        count
    }

    /// Sends `request` to the proxy and returns its status line.
    async fn ask(proxy: &EgressProxy, request: String) -> String {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // A CONNECT that succeeds keeps the tunnel open: its first line is all there is to read.
        let answer = read_until(&mut stream, b"\r\n").await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        text.lines().next().unwrap_or("").to_string()
    }

    /// Reads `stream` until what came holds `delimiter`, or the stream ends.
    async fn read_until(stream: &mut TcpStream, delimiter: &[u8]) -> Vec<u8> {
        let mut received = Vec::new();
        let mut chunk = [0u8; 8192];
        while !received
            .windows(delimiter.len())
            .any(|window| window == delimiter)
        {
            match stream.read(&mut chunk).await.unwrap() {
                0 => break,
                read => received.extend_from_slice(&chunk[..read]),
            }
        }
        received
    }

    /// [`ask`] with the proxy's credential: `head` is the request line and its headers, without
    /// the blank line that ends them.
    async fn ask_with_credential(proxy: &EgressProxy, head: &str) -> String {
        let authorization = authorization(proxy);
        ask(
            proxy,
            format!("{head}\r\nProxy-Authorization: {authorization}\r\n\r\n"),
        )
        .await
    }

    fn run(command: &str) {
        let status = std::process::Command::new("sh")
            .args(["-c", command])
            .status()
            .unwrap();
        assert!(status.success(), "{command}");
    }

    #[test]
    fn the_peer_socket_s_uid_is_read_from_the_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: 0100007F:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
             1: 0100007F:D431 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 65534        0 2 1 0 20 4 30 10 -1\n\
             2: 0100007F:9C40 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        let proxy: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(peer_uid(table, client, proxy), Some(65534));
        assert_eq!(peer_uid(table, proxy, client), Some(0));
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(peer_uid(table, other, proxy), None);
    }

    // Guards the proxy's credential where it shows (yt-dlp's ffmpeg's command line): another
    // local user who holds it is still not served. A client run as `nobody` gets the connection
    // closed with no answer; the same request from this user gets its 407 (no credential sent).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_of_another_uid_is_not_served() {
        let resolver = loopback_resolver();
        let proxy = EgressProxy::start(Arc::new(NetworkPolicy::default()), resolver)
            .await
            .unwrap();
        // A closed connection reads as nothing; a reset one (closed with the request unread) too.
        let client = format!(
            "import socket\n\
             s = socket.create_connection(('127.0.0.1', {}))\n\
             try:\n    \
             s.sendall(b'GET http://example.invalid/ HTTP/1.1\\r\\nHost: example.invalid\\r\\n\\r\\n')\n    \
             print(s.recv(64).decode(errors='replace').split('\\r\\n')[0])\n\
             except (ConnectionResetError, BrokenPipeError):\n    \
             print('')\n",
            proxy.addr.port()
        );
        let answer = |as_nobody: bool| {
            let client = client.clone();
            async move {
                let mut command = tokio::process::Command::new(if as_nobody {
                    "setpriv"
                } else {
                    "/usr/bin/python3"
                });
                if as_nobody {
                    command.args([
                        "--reuid=65534",
                        "--regid=65534",
                        "--clear-groups",
                        "/usr/bin/python3",
                    ]);
                }
                let output = command.args(["-c", &client]).output().await.unwrap();
                assert!(output.status.success(), "{output:?}");
                String::from_utf8_lossy(&output.stdout).trim().to_string()
            }
        };
        assert!(
            answer(false).await.contains("407"),
            "this user gets an answer"
        );
        assert_eq!(answer(true).await, "", "another user gets nothing");
    }

    // Guards the plain-HTTP relay: a client that pipelines a second request on one proxied
    // connection (an HTTP pool reusing it for another host) must not have it sent to the first
    // origin, which was the only host checked. The origin records what its first read brings:
    // before the fix, the proxy sent the bytes after the first head along with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_request_on_a_plain_connection_never_reaches_the_origin() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (first_read_sender, first_read) = tokio::sync::oneshot::channel::<Vec<u8>>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let received = read_until(&mut stream, b"\r\n\r\n").await;
            let _ = first_read_sender.send(received);
            // A hostile origin: it answers, ignores `Connection: close` and keeps the connection.
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            let mut chunk = [0u8; 8192];
            while matches!(stream.read(&mut chunk).await, Ok(read) if read > 0) {}
        });
        let policy = NetworkPolicy {
            allow_private_network: true,
            ..NetworkPolicy::default()
        };
        let resolver = loopback_resolver();
        let proxy = EgressProxy::start(Arc::new(policy), resolver)
            .await
            .unwrap();
        let authorization = authorization(&proxy);
        let request = |host: &str| {
            format!(
                "GET http://{host}:{port}/media HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: {authorization}\r\n\r\n"
            )
        };
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let pipelined = request("first.example") + &request("second.example");
        client.write_all(pipelined.as_bytes()).await.unwrap();
        let received = String::from_utf8(first_read.await.unwrap()).unwrap();
        assert!(received.contains("first.example"), "{received}");
        assert!(
            !received.contains("second.example"),
            "the second request reached the first origin: {received}"
        );
        assert!(received.contains("Connection: close"), "{received}");
        assert!(!received.contains("Proxy-Authorization"), "{received}");
    }

    // Guards against DNS rebinding: a name whose first answer is a public address and whose
    // next answers are loopback is checked at every request. The first request reaches the public
    // origin; the CONNECT and the plain request after it are refused (403), the loopback origin
    // never sees a connection, and the refusal is kept as `forbidden_address`. A request without
    // the proxy's credential gets a 407 and resolves nothing. It runs on a thread moved into a
    // network namespace of its own (only `lo`, with the "public" address on it), so nothing can
    // leave the machine.
    #[test]
    fn a_name_rebinding_to_loopback_is_refused_at_the_next_request() {
        in_sealed_namespace(rebinding_is_refused);
    }

    /// Runs `test` on a thread of its own moved into a new network namespace with only `lo` up and
    /// the "public" address 93.184.216.34 on it: nothing it does can leave the machine. (Sockets
    /// belong to the namespace of the thread that creates them, hence a current-thread runtime.)
    fn in_sealed_namespace<F: std::future::Future<Output = ()> + 'static>(test: fn() -> F) {
        std::thread::spawn(move || {
            // SAFETY: unshare(2) takes a flag and moves only this thread into a new namespace.
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(unshared, 0, "unshare: {}", std::io::Error::last_os_error());
            run("ip link set lo up && ip addr add 93.184.216.34/32 dev lo");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(test());
        })
        .join()
        .expect("the test thread passes");
    }

    /// A resolver with fixed answers.
    struct Fixed(Vec<(&'static str, IpAddr)>);

    impl Resolver for Fixed {
        fn resolve(
            &self,
            host: &str,
            port: u16,
        ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
            let found: Vec<SocketAddr> = self
                .0
                .iter()
                .filter(|(name, _)| *name == host)
                .map(|(_, ip)| SocketAddr::new(*ip, port))
                .collect();
            Box::pin(async move { Ok(found) })
        }
    }

    // Guards the chaining to NARRA_PROXY: the egress proxy chains to the configured proxy with a
    // CONNECT to the address it checked (never the name, which the upstream would resolve again),
    // with the upstream's credential; a name resolving to loopback is refused before the upstream
    // hears of it.
    #[test]
    fn the_configured_proxy_is_asked_for_checked_addresses_only() {
        in_sealed_namespace(chaining_checks_names_first);
    }

    async fn chaining_checks_names_first() {
        let public = TcpListener::bind("93.184.216.34:0").await.unwrap();
        let port = public.local_addr().unwrap().port();
        let public = origin(public);
        // The upstream proxy: records each CONNECT head, then tunnels to the address named.
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = upstream.accept().await {
                let (head, _) = read_head(&mut client).await.unwrap();
                recorded.lock().unwrap().push((
                    head.target.clone(),
                    head.header("Proxy-Authorization").map(str::to_string),
                ));
                let mut server = TcpStream::connect(head.target.as_str()).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        let policy = NetworkPolicy {
            proxy: Some(format!("http://corp:p%40ss@{upstream_addr}")),
            ..NetworkPolicy::default()
        };
        let resolver = Arc::new(Fixed(vec![
            ("media.test", "93.184.216.34".parse().unwrap()),
            ("inside.test", "127.0.0.1".parse().unwrap()),
        ]));
        let proxy = EgressProxy::start(Arc::new(policy), resolver)
            .await
            .unwrap();

        let fetched = ask_with_credential(
            &proxy,
            &format!("GET http://media.test:{port}/video HTTP/1.1\r\nHost: media.test"),
        )
        .await;
        assert!(fetched.contains(" 200 "), "{fetched}");
        let refused =
            ask_with_credential(&proxy, &format!("CONNECT inside.test:{port} HTTP/1.1")).await;
        assert!(refused.contains(" 403 "), "{refused}");

        assert_eq!(public.load(Ordering::SeqCst), 1);
        assert_eq!(
            *heads.lock().unwrap(),
            [(
                format!("93.184.216.34:{port}"),
                Some(format!("Basic {}", base64(b"corp:p@ss")))
            )],
            "one CONNECT, to the checked address, with the upstream's credential"
        );
    }

    async fn rebinding_is_refused() {
        let public = std::net::TcpListener::bind("93.184.216.34:0").unwrap();
        let port = public.local_addr().unwrap().port();
        let internal = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        for listener in [&public, &internal] {
            listener.set_nonblocking(true).unwrap();
        }
        let public = origin(TcpListener::from_std(public).unwrap());
        let internal = origin(TcpListener::from_std(internal).unwrap());
        let resolver = Arc::new(Rebinding {
            calls: AtomicUsize::new(0),
            first: "93.184.216.34".parse().unwrap(),
            then: "127.0.0.1".parse().unwrap(),
        });
        let proxy = EgressProxy::start(Arc::new(NetworkPolicy::default()), resolver.clone())
            .await
            .unwrap();
        let target = format!("rebind.test:{port}");

        let anonymous = ask(
            &proxy,
            format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        )
        .await;
        assert!(anonymous.contains(" 407 "), "{anonymous}");
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);

        let video = format!("GET http://{target}/video HTTP/1.1\r\nHost: {target}");
        let first = ask_with_credential(&proxy, &video).await;
        assert!(first.contains(" 200 "), "{first}");
        let tunnel = ask_with_credential(
            &proxy,
            &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}"),
        )
        .await;
        assert!(tunnel.contains(" 403 "), "{tunnel}");
        let plain = ask_with_credential(&proxy, &video).await;
        assert!(plain.contains(" 403 "), "{plain}");

        assert_eq!(
            resolver.calls.load(Ordering::SeqCst),
            3,
            "resolved at every request"
        );
        assert_eq!(public.load(Ordering::SeqCst), 1);
        assert_eq!(
            internal.load(Ordering::SeqCst),
            0,
            "the loopback origin saw nothing"
        );
        let refusal = proxy.refusal().expect("the refusal is kept");
        assert_eq!(refusal.class, ErrorClass::ForbiddenAddress);
        assert!(refusal.message.contains("127.0.0.1"), "{}", refusal.message);
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"narra:secret"), "bmFycmE6c2VjcmV0");
    }
}
