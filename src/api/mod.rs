//! The HTTP API and the admin console (`narra serve`): one more client of the operations the CLI
//! calls. Handlers only translate: they parse a request, call the same library function the
//! matching command calls (`engine::orchestrator::submit`, `store.retry`, `engine::retry::retry_from`,
//! `engine::stuck::reset_job`, `engine::cleanup::{plan, execute}`, `engine::verify::verify_job`,
//! `engine::health::assess`, `engine::backfill::submit_manifest`, ...) and answer with the JSON
//! shapes of `views` that `--json` prints. No transition, plan or check is decided here.
//!
//! What this module must never do: run a job in a request (the worker of `serve` claims what is
//! queued), read or write a path that a request names (ids are parsed into `JobId`s, sources must be
//! `http(s)` URLs, and the only files it reaches are those the engine's own functions reach), or
//! answer an error in anything but `{"error": {"class", "message"}}` (`error::ApiError`).
//!
//! Trust: every mutating endpoint (every `POST`) needs `Authorization: Bearer <NARRA_API_TOKEN>`,
//! compared in constant time (`token_matches`): 401 when it is missing, 403 when it is wrong or
//! when the server has no token (then it is read-only). Reads are open on a loopback address
//! (whoever reaches it is on this machine, like the CLI) and need the token too when `serve` binds
//! any other address, which it refuses to do without a token. Reads that make the server read
//! every object (`GET /cleanup`, the dry run that lists and may re-hash all of storage, and
//! `GET /verify/{id}?deep=true`) need the token on any bind (`heavy_read`).
//!
//! DNS rebinding: a web page on another site can make a browser on this machine send requests to
//! a loopback port under the page's own host name. On a loopback bind, a request whose `Host` is
//! not a loopback name or address (`localhost`, `127.0.0.0/8`, `[::1]`) is refused (403,
//! `forbidden_host`) before anything else (`host_is_loopback`).

pub mod console;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod operations;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::engine::Engine;
use crate::model::job::JobId;
pub use error::ApiError;

/// The largest request body read: a manifest of tens of thousands of URLs fits.
pub const BODY_MAX_BYTES: usize = 4 * 1024 * 1024;
/// The environment variable holding the bearer token.
pub const TOKEN_ENV: &str = "NARRA_API_TOKEN";
/// Who the incident log and job events name for an action taken through the API.
pub const API_ACTOR: &str = "api";

/// How the API is exposed.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// The bearer token mutations need; `None`: the API is read-only.
    pub token: Option<String>,
    /// Whether reads need the token too (`serve` bound a non-loopback address).
    pub token_for_reads: bool,
    /// Whether only requests naming a loopback `Host` are served (`serve` bound a loopback
    /// address): a DNS-rebinding page names its own.
    pub loopback_hosts_only: bool,
}

impl ApiConfig {
    /// The configuration for serving on `bind` with `token`: refused (a usage error, in words) for
    /// a non-loopback address without a token.
    pub fn for_bind(bind: SocketAddr, token: Option<String>) -> Result<ApiConfig, String> {
        let token = token.filter(|token| !token.trim().is_empty());
        let loopback = bind.ip().is_loopback();
        if !loopback && token.is_none() {
            return Err(format!(
                "refusing to serve on {bind}, which is not a loopback address, without {TOKEN_ENV}: set a token, or bind 127.0.0.1"
            ));
        }
        Ok(ApiConfig {
            token,
            token_for_reads: !loopback,
            loopback_hosts_only: loopback,
        })
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub engine: Engine,
    pub config: ApiConfig,
}

/// Whether `presented` is `expected`, in time that depends only on their lengths (a token's length
/// is no secret worth keeping; its bytes are).
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    presented.len() == expected.len() && bool::from(presented.ct_eq(expected))
}

/// Checks the bearer token of a request that needs one.
pub fn authorize(config: &ApiConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .and_then(|value| value.strip_prefix(b"Bearer "));
    let Some(presented) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this request needs an Authorization: Bearer token (NARRA_API_TOKEN)",
        ));
    };
    let Some(expected) = &config.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this server was started without {TOKEN_ENV}: it is read-only"),
        ));
    };
    if token_matches(presented, expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token is not this server's",
        ))
    }
}

/// Whether `host` (a `Host` header's value, with or without its port) names this machine's
/// loopback: `localhost` (or a name under `.localhost`, which resolvers keep on loopback), an
/// address of `127.0.0.0/8`, or `[::1]`.
pub fn host_is_loopback(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        match rest.split_once(']') {
            Some((address, port)) if port.is_empty() || is_port(port) => address,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|address| address.is_loopback())
}

fn is_port(text: &str) -> bool {
    text.strip_prefix(':')
        .unwrap_or(text)
        .parse::<u16>()
        .is_ok()
}

/// Whether a read makes the server read every object, so that a page that reaches the port
/// must not be able to start it: the cleanup dry run (it lists all of storage and, `deep`,
/// re-hashes it) and a deep verify.
pub fn heavy_read(path: &str, query: Option<&str>) -> bool {
    let deep = query.is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == "deep" && value != "false" && value != "0")
    });
    path == "/cleanup" || (path.starts_with("/verify/") && deep)
}

/// The guard layer, in order: on a loopback bind, a `Host` that is not loopback is refused;
/// mutations always need the token, heavy reads too, and every read when `token_for_reads`. The
/// console page itself is static and always served (it asks for the token).
async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.config.loopback_hosts_only {
        let host = request
            .headers()
            .get(axum::http::header::HOST)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                request
                    .uri()
                    .authority()
                    .map(|authority| authority.to_string())
            });
        if !host.as_deref().is_some_and(host_is_loopback) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                "this server listens on loopback and answers requests for a loopback host only (localhost, 127.0.0.1, [::1]); the Host header named another",
            ));
        }
    }
    let mutating = !matches!(*request.method(), Method::GET | Method::HEAD);
    let console = request.uri().path() == "/";
    let heavy = heavy_read(request.uri().path(), request.uri().query());
    if mutating || heavy || (state.config.token_for_reads && !console) {
        authorize(&state.config, request.headers())?;
    }
    Ok(next.run(request).await)
}

/// The API's routes over `engine`.
pub fn router(engine: Engine, config: ApiConfig) -> Router {
    let state = ApiState { engine, config };
    Router::new()
        .route("/", get(console::page))
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/jobs/{id}/logs", get(jobs::logs))
        .route("/jobs/{id}/retry", axum::routing::post(jobs::retry))
        .route("/jobs/{id}/cancel", axum::routing::post(jobs::cancel))
        .route("/jobs/{id}/reset", axum::routing::post(jobs::reset))
        .route(
            "/backfills",
            axum::routing::post(operations::create_backfill),
        )
        .route("/backfills/{id}", get(operations::backfill))
        .route("/verify/{id}", get(operations::verify))
        .route(
            "/cleanup",
            get(operations::cleanup_plan).post(operations::cleanup_confirm),
        )
        .route("/health", get(operations::health))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(console::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(DefaultBodyLimit::max(BODY_MAX_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; GET /openapi.json lists them")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; GET /openapi.json lists them",
    )
}

/// The HTTP side of `narra serve`, which the binary hands to `cli::run` (the CLI and the API never
/// use each other): checks the configuration for `bind` (`NARRA_API_TOKEN`; a usage error when it
/// is refused), then, given the engine, the bound listener and the signal to drain on, serves the
/// API and the console until drained.
// The shape is `cli::serve::HttpService`, which the API may not name.
#[allow(clippy::type_complexity)]
pub fn http_service(
    bind: std::net::SocketAddr,
) -> Result<
    impl FnOnce(
        Engine,
        tokio::net::TcpListener,
        BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, std::io::Result<()>>
    + Send
    + 'static,
    String,
> {
    let config = ApiConfig::for_bind(bind, std::env::var(TOKEN_ENV).ok())?;
    if config.token.is_none() {
        tracing::warn!("{TOKEN_ENV} is not set: the API and the console are read-only");
    }
    Ok(move |engine, listener, drained: BoxFuture<'static, ()>| {
        Box::pin(serve(listener, router(engine, config), drained)) as BoxFuture<'static, _>
    })
}

/// Serves `router` on `listener` until `shutdown` resolves, letting requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A job id from a path segment: 400 when it is not one.
pub fn parse_job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse::<JobId>()
        .map_err(|error| ApiError::bad_request(format!("{text:?} is not a job id: {error}")))
}

/// A request body, at most [`BODY_MAX_BYTES`], whose rejections are JSON errors.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Body, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is over the limit of {BODY_MAX_BYTES} bytes"),
            )
        };
        // A body announced too large is refused from its headers, before a byte of it is read;
        // one that does not say its length is cut off at the limit while it is read.
        let announced = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if announced.is_some_and(|length| length > BODY_MAX_BYTES as u64) {
            return Err(too_large());
        }
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(too_large())
            }
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

impl Body {
    /// The body as JSON of type `T`; an empty body is `T::default()`.
    pub fn json_or_default<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.0.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        self.json()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.0).map_err(|error| {
            ApiError::bad_request(format!("the body is not the JSON expected: {error}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_byte_for_byte() {
        assert!(token_matches(b"s3cret-token", b"s3cret-token"));
        assert!(!token_matches(b"s3cret-tokem", b"s3cret-token"));
        assert!(!token_matches(b"s3cret", b"s3cret-token"));
        assert!(!token_matches(b"", b"s3cret-token"));
    }

    #[test]
    fn a_non_loopback_bind_needs_a_token_and_then_reads_need_it_too() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(ApiConfig::for_bind(public, None).is_err());
        assert!(ApiConfig::for_bind(public, Some("  ".into())).is_err());
        assert!(
            ApiConfig::for_bind(public, Some("t".into()))
                .unwrap()
                .token_for_reads
        );
        let local = ApiConfig::for_bind(loopback, None).unwrap();
        assert!(!local.token_for_reads && local.token.is_none());
    }

    #[test]
    fn only_loopback_hosts_are_loopback() {
        for host in [
            "localhost",
            "localhost:8080",
            "LocalHost.:8080",
            "app.localhost:1",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(host_is_loopback(host), "{host}");
        }
        for host in [
            "",
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:8080",
            "10.0.0.1:8080",
            "[::2]:80",
            "[::1]x",
            "localhost:http",
            "localhost:99999",
        ] {
            assert!(!host_is_loopback(host), "{host}");
        }
    }

    #[test]
    fn reads_of_every_object_are_heavy() {
        assert!(heavy_read("/cleanup", None));
        assert!(heavy_read("/cleanup", Some("deep=true&min_age_s=0")));
        assert!(heavy_read("/verify/01J", Some("deep=true")));
        assert!(heavy_read("/verify/01J", Some("deep=1")));
        assert!(!heavy_read("/verify/01J", Some("deep=false")));
        assert!(!heavy_read("/verify/01J", None));
        assert!(!heavy_read("/jobs", Some("deep=true")));
    }

    #[test]
    fn a_missing_token_is_401_and_a_wrong_or_absent_one_403() {
        let config = ApiConfig {
            token: Some("right".into()),
            token_for_reads: false,
            loopback_hosts_only: true,
        };
        let mut headers = HeaderMap::new();
        assert_eq!(
            authorize(&config, &headers).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        headers.insert("authorization", "Bearer wrong".parse().unwrap());
        assert_eq!(
            authorize(&config, &headers).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        headers.insert("authorization", "Bearer right".parse().unwrap());
        assert!(authorize(&config, &headers).is_ok());
        let read_only = ApiConfig::default();
        assert_eq!(
            authorize(&read_only, &headers).unwrap_err().class,
            "forbidden"
        );
    }
}
