//! Who may ask: the Host allowlist and the token, in front of every route
//! but `/healthz` and `/readyz`.
//!
//! The Host check stops DNS rebinding: a page the user visits can point its
//! own name at 127.0.0.1, but the browser then sends that name as Host. The
//! token is taken as `Authorization: Bearer TOKEN` (scripts, Prometheus) or
//! as the password of basic auth (browsers prompt for it), never from the
//! URL, so it stays out of logs and history.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use crate::config::HttpConfig;

/// The access rules, built once from `[http]`.
#[derive(Clone, Default)]
pub struct Access {
    token: Option<Arc<SecretString>>,
    metrics_token: Option<Arc<SecretString>>,
    /// `None` serves any Host.
    allowed_hosts: Option<Arc<[String]>>,
}

/// What a request may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/healthz`, `/readyz`: open, any Host (orchestrators probe by IP).
    Probe,
    /// `/metrics`: either token.
    Metrics,
    /// The dashboard and `/api/*`: the HTTP token.
    Data,
}

impl Access {
    /// Everything open to any Host: for tests that serve a router alone.
    pub fn open() -> Access {
        Access::default()
    }

    pub fn from_config(cfg: &HttpConfig) -> Access {
        Access {
            token: cfg.token.clone().map(Arc::new),
            metrics_token: cfg.metrics_token.clone().map(Arc::new),
            allowed_hosts: cfg.allowed_hosts.clone().map(Into::into),
        }
    }

    /// True when the dashboard and `/api` need a token.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(allowed) = &self.allowed_hosts else {
            return true;
        };
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let name = host_name(host).to_ascii_lowercase();
        allowed.contains(&name)
    }

    fn token_accepted(&self, route: Route, headers: &HeaderMap) -> bool {
        let tokens: Vec<&SecretString> = match route {
            Route::Probe => return true,
            Route::Metrics => [&self.token, &self.metrics_token]
                .into_iter()
                .flatten()
                .map(|t| t.as_ref())
                .collect(),
            Route::Data => self.token.iter().map(|t| t.as_ref()).collect(),
        };
        if tokens.is_empty() {
            // No token configured: config allowed that on loopback only,
            // or with authentication turned off by name.
            return true;
        }
        let Some(given) = presented(headers) else {
            return false;
        };
        // Every token is compared, so the time taken does not say which one
        // (or how much of one) matched.
        tokens.iter().fold(false, |ok, t| {
            ok | same(t.expose_secret().as_bytes(), &given)
        })
    }
}

/// The middleware: 421 for a foreign Host, 401 without the right token.
pub async fn guard(State(access): State<Access>, req: Request, next: Next) -> Response {
    let route = match req.uri().path() {
        "/healthz" | "/readyz" => Route::Probe,
        "/metrics" => Route::Metrics,
        _ => Route::Data,
    };
    if route == Route::Probe {
        return next.run(req).await;
    }
    if !access.host_allowed(req.headers()) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served here: add it to CDC_HTTP_ALLOWED_HOSTS\n",
        )
            .into_response();
    }
    if !access.token_accepted(route, req.headers()) {
        // Browsers prompt for basic auth; scripts send a Bearer token.
        let challenge = match route {
            Route::Metrics => "Bearer realm=\"cdc-monitor\"",
            _ => "Basic realm=\"cdc-monitor\", charset=\"UTF-8\"",
        };
        return (
            StatusCode::UNAUTHORIZED,
            [
                (header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            "a token is required: Authorization: Bearer TOKEN, or basic auth with the token as password\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// The host name of a Host header: no port, no IPv6 brackets.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The credential in `Authorization`: a Bearer token, or the password of
/// basic auth (any user name).
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

/// Equality whose time depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn access(token: Option<&str>, metrics: Option<&str>, hosts: Option<&[&str]>) -> Access {
        Access {
            token: token.map(|t| Arc::new(SecretString::from(t.to_owned()))),
            metrics_token: metrics.map(|t| Arc::new(SecretString::from(t.to_owned()))),
            allowed_hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn host_names_lose_their_port_and_brackets() {
        assert_eq!(host_name("localhost:3000"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:3000"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("Evil.example:80"), "Evil.example");
    }

    #[test]
    fn only_listed_hosts_pass_and_a_missing_host_does_not() {
        let a = access(None, None, Some(&["localhost", "127.0.0.1", "::1"]));
        assert!(a.host_allowed(&headers(&[(header::HOST, "localhost:3000")])));
        assert!(a.host_allowed(&headers(&[(header::HOST, "LOCALHOST:3000")])));
        assert!(a.host_allowed(&headers(&[(header::HOST, "[::1]:3000")])));
        assert!(!a.host_allowed(&headers(&[(header::HOST, "rebind.example:3000")])));
        assert!(!a.host_allowed(&headers(&[(header::HOST, "localhost.example")])));
        assert!(!a.host_allowed(&HeaderMap::new()));
        assert!(access(None, None, None).host_allowed(&HeaderMap::new()));
    }

    #[test]
    fn bearer_and_basic_carry_the_token_and_nothing_else_does() {
        let a = access(Some("s3cret"), None, None);
        let basic = |user_pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        let ok = |v: &str| a.token_accepted(Route::Data, &headers(&[(header::AUTHORIZATION, v)]));
        assert!(ok("Bearer s3cret"));
        assert!(ok("bearer   s3cret"));
        assert!(ok(&basic("anyone:s3cret")));
        assert!(ok(&basic(":s3cret")));
        assert!(!ok("Bearer s3cre"));
        assert!(!ok("Bearer s3cret2"));
        assert!(!ok(&basic("s3cret:")));
        assert!(!ok(&basic("s3cret")));
        assert!(!ok("Token s3cret"));
        assert!(!ok("s3cret"));
        assert!(!a.token_accepted(Route::Data, &HeaderMap::new()));
        assert!(a.token_accepted(Route::Probe, &HeaderMap::new()));
    }

    #[test]
    fn metrics_take_either_token_and_data_only_the_http_token() {
        let a = access(Some("web"), Some("scrape"), None);
        let with = |route, t: &str| {
            a.token_accepted(
                route,
                &headers(&[(header::AUTHORIZATION, &format!("Bearer {t}"))]),
            )
        };
        assert!(with(Route::Metrics, "web"));
        assert!(with(Route::Metrics, "scrape"));
        assert!(with(Route::Data, "web"));
        assert!(!with(Route::Data, "scrape"));
        // A scrape token alone guards /metrics only.
        let m = access(None, Some("scrape"), None);
        assert!(!m.token_accepted(Route::Metrics, &HeaderMap::new()));
        assert!(m.token_accepted(Route::Data, &HeaderMap::new()));
    }
}
