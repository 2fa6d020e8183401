//! Authentication and authorisation: JWTs (HS256 with a shared secret, RS256 or ES256 with a public key),
//! the `herald` claim's topic patterns, public topics, and where a request's token is read from.
//!
//! A token is read from `Authorization: Bearer …`, else the `herald_token` cookie, else the `access_token`
//! query parameter; the first one present is the one judged. `exp` and `nbf` are enforced when present,
//! with no leeway. Token values never reach logs or error messages: errors say what was wrong, not what
//! was sent.
//!
//! The cookie is sent by the browser whichever page makes the request, so a publish authenticated by it
//! must also show that it comes from this server's own origin or a named `--cors-origin` (`Origin`, else
//! `Sec-Fetch-Site`); otherwise it is refused as a cross-site request forgery.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, Uri};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::Error;
use crate::topic::Topic;

/// The cookie a browser may carry its token in.
pub const TOKEN_COOKIE: &str = "herald_token";
/// The query parameter for clients that cannot set headers (EventSource).
pub const TOKEN_QUERY: &str = "access_token";

/// A topic pattern: a topic, a prefix ending in `*`, or `*` alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every topic.
    Any,
    /// `doc/*`: every topic starting with `doc/`.
    Prefix(String),
    /// One topic.
    Exact(String),
}

impl Pattern {
    /// Reads a pattern from a token's claims. Anything is accepted: a pattern that is no valid topic
    /// simply matches nothing.
    pub fn from_claim(s: &str) -> Pattern {
        match s.strip_suffix('*') {
            Some("") => Pattern::Any,
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(s.to_owned()),
        }
    }

    /// Reads a claim's list of patterns.
    pub fn from_claims(claims: &[String]) -> Vec<Pattern> {
        claims.iter().map(|p| Pattern::from_claim(p)).collect()
    }

    /// Reads a `--public-topic` pattern, refusing one that could never match as written (`a*b`, `a b`).
    ///
    /// # Errors
    /// A message naming the pattern.
    pub fn parse_flag(s: &str) -> Result<Pattern, String> {
        let pattern = Pattern::from_claim(s);
        let ok = match &pattern {
            Pattern::Any => true,
            Pattern::Prefix(p) => p.is_empty() || crate::topic::validate_topic(p).is_ok(),
            Pattern::Exact(t) => crate::topic::validate_topic(t).is_ok(),
        };
        if ok {
            Ok(pattern)
        } else {
            Err(format!("--public-topic {s:?} is not a topic, a prefix ending in *, or *"))
        }
    }

    /// Whether `topic` is covered.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
            Pattern::Exact(t) => t == topic,
        }
    }
}

fn covered(patterns: &[Pattern], topic: &str) -> bool {
    patterns.iter().any(|p| p.matches(topic))
}

/// The claims Herald reads; others (`aud`, `iss`, `sub`, …) are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    herald: Grants,
    /// NumericDates (RFC 7519): seconds since the epoch, possibly with a fraction.
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
}

/// The `herald` claim.
#[derive(Debug, Default, Deserialize)]
struct Grants {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// A verified token.
#[derive(Debug)]
struct Token {
    grants: Grants,
    /// When the token stops being valid, if it says.
    expires: Option<SystemTime>,
}

/// What a subscription is allowed for: until when, if a token was needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeGrant {
    /// The stream ends at this instant (its token expires then); `None` for streams that need no token
    /// or whose token does not expire.
    pub ends_at: Option<Instant>,
}

/// The authentication of one node, made once from the configuration.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    public: Vec<Pattern>,
    /// [`AuthSettings::cookie_origins`], in ASCII lower case without a trailing `/`.
    cookie_origins: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of debug output.
        f.debug_struct("Auth")
            .field("algorithms", &self.validation.algorithms)
            .field("public", &self.public)
            .field("cookie_origins", &self.cookie_origins)
            .finish()
    }
}

/// What authentication is made from: the flags that concern it, gathered by the configuration
/// ([`crate::Config::auth`]) so that this module needs nothing else of it.
#[derive(Clone, Default)]
pub struct AuthSettings {
    /// `--jwt-secret`: verify HS256/384/512 tokens with this shared secret.
    pub jwt_secret: Option<String>,
    /// `--jwt-public-key`: verify RS256 or ES256 tokens with the PEM public key in this file.
    pub jwt_public_key: Option<PathBuf>,
    /// `--public-topic`: patterns of the topics anyone may subscribe to.
    pub public_topics: Vec<String>,
    /// Origins (`scheme://host[:port]`) whose pages may publish with the `herald_token` cookie, besides
    /// the server's own: the named `--cors-origin`s (`*` is no origin, and does not count).
    pub cookie_origins: Vec<String>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of debug output.
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "…"))
            .field("jwt_public_key", &self.jwt_public_key)
            .field("public_topics", &self.public_topics)
            .field("cookie_origins", &self.cookie_origins)
            .finish()
    }
}

/// Why [`AuthSettings`] cannot be used: a message naming the flag and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

impl Auth {
    /// Makes the authenticator the settings ask for: `None` when no key is configured (open mode).
    ///
    /// # Errors
    /// A [`SettingsError`] when the key cannot be used or the flags contradict each other.
    pub fn new(settings: &AuthSettings) -> Result<Option<Auth>, SettingsError> {
        let invalid = SettingsError;
        let public = settings
            .public_topics
            .iter()
            .map(|p| Pattern::parse_flag(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let (key, algorithms) = match (&settings.jwt_secret, &settings.jwt_public_key) {
            (Some(_), Some(_)) => {
                return Err(invalid("give --jwt-secret or --jwt-public-key, not both".into()));
            }
            (None, None) if !public.is_empty() => {
                return Err(invalid(
                    "--public-topic needs authentication (--jwt-secret or --jwt-public-key): without it every \
                     topic is open"
                        .into(),
                ));
            }
            (None, None) => return Ok(None),
            (Some(secret), None) => {
                if secret.is_empty() {
                    return Err(invalid("--jwt-secret is empty".into()));
                }
                let key = DecodingKey::from_secret(secret.as_bytes());
                (key, vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| invalid(format!("--jwt-public-key {}: cannot read: {e}", path.display())))?;
                // jsonwebtoken would also take an RSA private key here and then verify nothing.
                let label = String::from_utf8_lossy(&pem);
                if !label.contains("-----BEGIN PUBLIC KEY-----") && !label.contains("-----BEGIN RSA PUBLIC KEY-----") {
                    return Err(invalid(format!(
                        "--jwt-public-key {}: not a PEM public key (BEGIN PUBLIC KEY); a private key belongs with \
                         the token issuer only",
                        path.display()
                    )));
                }
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512])
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, vec![Algorithm::ES256, Algorithm::ES384])
                } else {
                    return Err(invalid(format!(
                        "--jwt-public-key {}: not a PEM RSA or EC (P-256) public key",
                        path.display()
                    )));
                }
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        // `exp` and `nbf` are checked in `verify_token`: jsonwebtoken reads them as whole seconds only, and
        // would refuse a NumericDate with a fraction as malformed.
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let cookie_origins = settings.cookie_origins.iter().map(|o| normalise_origin(o)).collect();
        Ok(Some(Auth { key, validation, public, cookie_origins }))
    }

    /// Whether anyone may subscribe to `topic`.
    pub fn is_public(&self, topic: &str) -> bool {
        covered(&self.public, topic)
    }

    /// Judges a subscription: topics that are public need nothing; the others need a valid token whose
    /// `subscribe` patterns cover each of them.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when a token is needed and none valid was given, [`Error::Forbidden`] when
    /// the token does not allow one of the topics.
    pub fn authorize_subscribe(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        topics: &[Topic],
    ) -> Result<SubscribeGrant, Error> {
        let mut private = topics.iter().filter(|t| !self.is_public(t)).peekable();
        if private.peek().is_none() {
            return Ok(SubscribeGrant { ends_at: None });
        }
        let token = self.verify(headers, query)?;
        let patterns = Pattern::from_claims(&token.grants.subscribe);
        if let Some(topic) = private.find(|t| !covered(&patterns, t)) {
            return Err(Error::Forbidden(format!("the token does not allow subscribing to {topic:?}")));
        }
        let ends_at = token.expires.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
            Instant::now() + left
        });
        Ok(SubscribeGrant { ends_at })
    }

    /// Checks that the request carries a valid token at all (before its body is read), and that a valid
    /// token from the cookie comes from a page allowed to publish with it.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when it does not carry one, [`Error::CrossSiteRequest`] when the token is the
    /// cookie and the request does not show that it comes from this server's origin or a `--cors-origin`.
    pub fn authenticate_publisher(&self, headers: &HeaderMap, uri: &Uri) -> Result<PublishGrant, Error> {
        let Some((source, raw)) = find_token(headers, uri.query()) else {
            return Err(Error::Unauthorized("a token is required".into()));
        };
        // The token is judged first: a bad one is a 401 wherever it comes from.
        let token = self.verify_token(&raw)?;
        if source == TokenSource::Cookie {
            self.cookie_may_publish(headers, uri)?;
        }
        Ok(PublishGrant { patterns: Pattern::from_claims(&token.grants.publish) })
    }

    /// Whether a publish that carries the cookie comes from a page allowed to publish with it.
    ///
    /// A browser sends the cookie with a form posted from any site, without asking first (no CORS
    /// preflight for a form), so the cookie alone proves nothing about who publishes. The page's origin is
    /// read from `Origin` (sent with every POST by browsers), else from `Sec-Fetch-Site`; a request that
    /// shows neither is refused, as it could come from anywhere.
    fn cookie_may_publish(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), Error> {
        let refuse = |why: &str| {
            Err(Error::CrossSiteRequest(format!(
                "{why}: the herald_token cookie publishes only from this server's own origin or a --cors-origin; \
                 send the token in Authorization instead"
            )))
        };
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = normalise_origin(origin.to_str().unwrap_or(""));
            if self.cookie_origins.contains(&origin) {
                return Ok(());
            }
            let host = uri.authority().map(|a| a.as_str()).or_else(|| headers.get(header::HOST)?.to_str().ok());
            if host.is_some_and(|host| same_origin(&origin, host)) {
                return Ok(());
            }
            return refuse("the request comes from a page of another origin");
        }
        match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            Some(site) if site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none") => Ok(()),
            Some(_) => refuse("the request comes from another site (Sec-Fetch-Site)"),
            None => refuse("the request says neither where it comes from (Origin) nor whether it is same-origin"),
        }
    }

    fn verify(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Token, Error> {
        let Some((_, raw)) = find_token(headers, query) else {
            return Err(Error::Unauthorized("a token is required".into()));
        };
        self.verify_token(&raw)
    }

    fn verify_token(&self, raw: &str) -> Result<Token, Error> {
        let data = jsonwebtoken::decode::<Claims>(raw, &self.key, &self.validation).map_err(|e| {
            Error::Unauthorized(
                match e.kind() {
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    ErrorKind::InvalidAlgorithm => "the token's algorithm is not the configured key's",
                    _ => "the token is malformed",
                }
                .into(),
            )
        })?;
        // No leeway: a token is valid from its `nbf` and over at its `exp`.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        if data.claims.nbf.is_some_and(|nbf| nbf > now) {
            return Err(Error::Unauthorized("the token is not valid yet (nbf)".into()));
        }
        let Claims { herald, exp, .. } = data.claims;
        if exp.is_some_and(|exp| exp <= now) {
            return Err(Error::Unauthorized("the token has expired".into()));
        }
        // In the future, so positive; beyond any real date it only needs to be far.
        let expires = exp.map(|exp| UNIX_EPOCH + Duration::from_secs_f64(exp.min(1e15)));
        Ok(Token { grants: herald, expires })
    }
}

/// What a verified publisher may publish to.
#[derive(Debug)]
pub struct PublishGrant {
    patterns: Vec<Pattern>,
}

impl PublishGrant {
    /// Checks that every topic of the event is allowed.
    ///
    /// # Errors
    /// [`Error::Forbidden`] naming the first topic that is not.
    pub fn allow(&self, topics: &[Topic]) -> Result<(), Error> {
        match topics.iter().find(|t| !covered(&self.patterns, t)) {
            Some(topic) => Err(Error::Forbidden(format!("the token does not allow publishing to {topic:?}"))),
            None => Ok(()),
        }
    }
}

/// Where a request's token was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer …`: sent by a script that had the token.
    Header,
    /// The `herald_token` cookie: sent by the browser, whichever page makes the request.
    Cookie,
    /// The `access_token` query parameter: in a URL that a page had to make with the token.
    Query,
}

/// The request's token and where it was found: `Authorization: Bearer`, else the `herald_token` cookie,
/// else the `access_token` query parameter. An `Authorization` header of another scheme is not a token
/// source.
pub fn find_token(headers: &HeaderMap, query: Option<&str>) -> Option<(TokenSource, String)> {
    let bearer = headers.get_all(header::AUTHORIZATION).iter().find_map(|v| {
        let v = v.to_str().ok()?.trim_start();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_owned())
    });
    if let Some(token) = bearer {
        return Some((TokenSource::Header, token));
    }
    let cookie = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name.trim() == TOKEN_COOKIE).then(|| value.trim().trim_matches('"').to_owned())
        })
    });
    if let Some(token) = cookie {
        return Some((TokenSource::Cookie, token));
    }
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == TOKEN_QUERY)
        .map(|(_, v)| (TokenSource::Query, v.into_owned()))
}

/// An origin as compared: ASCII lower case, without a trailing `/` (browsers send neither; a flag may).
fn normalise_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Whether `origin` (normalised, `scheme://host[:port]`) is the origin of a page served by this server,
/// reached as `host` (the request's `Host` or `:authority`).
///
/// Host and port must match, a port left out being the default of the origin's scheme (browsers leave it
/// out of both). The scheme itself is not compared: Herald cannot know whether a proxy in front of it
/// speaks HTTPS to the browser, so `http://` and `https://` pages of the same host and port both count.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |a: &str| match split_port(a) {
        (host, Some(port)) => format!("{host}:{port}"),
        (host, None) => format!("{host}:{default_port}"),
    };
    with_port(authority) == with_port(&host.trim().to_ascii_lowercase())
}

/// `host[:port]` split at its port, if it has one (`[::1]:8080` has, `[::1]` has not).
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port)),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn patterns_match_as_api_md_says() {
        let doc = Pattern::from_claim("doc/*");
        assert!(doc.matches("doc/42") && doc.matches("doc/") && doc.matches("doc/a/b"));
        assert!(!doc.matches("doc") && !doc.matches("docs/1"));
        assert!(Pattern::from_claim("*").matches("anything/at/all"));
        assert!(Pattern::from_claim("user/7").matches("user/7"));
        assert!(!Pattern::from_claim("user/7").matches("user/70"));
        assert!(Pattern::parse_flag("a*b").is_err());
        assert!(Pattern::parse_flag("a b").is_err());
        assert_eq!(Pattern::parse_flag("news/*"), Ok(Pattern::Prefix("news/".into())));
    }

    #[test]
    fn the_first_source_present_is_the_one_read() {
        let mut h = HeaderMap::new();
        let found = |source, token: &str| Some((source, token.to_owned()));
        assert_eq!(find_token(&h, Some("topics=a&access_token=q")), found(TokenSource::Query, "q"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; herald_token=c; b=2"));
        assert_eq!(find_token(&h, Some("access_token=q")), found(TokenSource::Cookie, "c"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwdw=="));
        assert_eq!(find_token(&h, None), found(TokenSource::Cookie, "c"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  h "));
        assert_eq!(find_token(&h, Some("access_token=q")), found(TokenSource::Header, "h"));
        assert_eq!(find_token(&HeaderMap::new(), Some("topics=a")), None);
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        for (origin, host) in [
            ("http://example.com", "example.com"),
            ("https://example.com", "example.com"),
            ("http://example.com", "Example.COM:80"),
            ("https://example.com", "example.com:443"),
            ("http://example.com:8080", "example.com:8080"),
            ("https://example.com:8080", "example.com:8080"),
            ("http://[::1]:8080", "[::1]:8080"),
            ("http://[::1]", "[::1]"),
        ] {
            assert!(same_origin(origin, host), "{origin} {host}");
        }
        for (origin, host) in [
            ("http://example.com", "example.com:8080"),
            ("https://example.com", "example.com:80"),
            ("http://example.com:8080", "example.com"),
            ("http://example.com.evil.example", "example.com"),
            ("http://evil.example@example.com", "example.com"),
            ("http://example.com/", "example.com"),
            ("ftp://example.com", "example.com"),
            ("null", "example.com"),
            ("example.com", "example.com"),
            ("http://[::1]:8080", "[::1]"),
        ] {
            assert!(!same_origin(origin, host), "{origin} {host}");
        }
    }
}
