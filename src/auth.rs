//! Authentication and authorisation: JWTs (HS256 with a shared secret, RS256 or ES256 with a public key),
//! the `herald` claim's topic patterns, public topics, and where a request's token is read from.
//!
//! A token is read from `Authorization: Bearer …`, else the `herald_token` cookie, else the `access_token`
//! query parameter; the first one present is the one judged. `exp` and `nbf` are enforced when present,
//! with no leeway. Token values never reach logs or error messages: errors say what was wrong, not what
//! was sent.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap};
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
    #[serde(default)]
    exp: Option<f64>,
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
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of debug output.
        f.debug_struct("Auth").field("algorithms", &self.validation.algorithms).field("public", &self.public).finish()
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
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of debug output.
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "…"))
            .field("jwt_public_key", &self.jwt_public_key)
            .field("public_topics", &self.public_topics)
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
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        Ok(Some(Auth { key, validation, public }))
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

    /// Checks that the request carries a valid token at all (before its body is read).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when it does not.
    pub fn authenticate_publisher(&self, headers: &HeaderMap, query: Option<&str>) -> Result<PublishGrant, Error> {
        let token = self.verify(headers, query)?;
        Ok(PublishGrant { patterns: Pattern::from_claims(&token.grants.publish) })
    }

    fn verify(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Token, Error> {
        let Some(raw) = find_token(headers, query) else {
            return Err(Error::Unauthorized("a token is required".into()));
        };
        let data = jsonwebtoken::decode::<Claims>(&raw, &self.key, &self.validation).map_err(|e| {
            Error::Unauthorized(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    ErrorKind::InvalidAlgorithm => "the token's algorithm is not the configured key's",
                    _ => "the token is malformed",
                }
                .into(),
            )
        })?;
        let expires = data
            .claims
            .exp
            .filter(|s| s.is_finite() && *s >= 0.0)
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs_f64(s.min(1e15))));
        // jsonwebtoken compares whole seconds and accepts `exp == now`; a token is over at its `exp`.
        if expires.is_some_and(|at| at <= SystemTime::now()) {
            return Err(Error::Unauthorized("the token has expired".into()));
        }
        Ok(Token { grants: data.claims.herald, expires })
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

/// The request's token: `Authorization: Bearer`, else the `herald_token` cookie, else the `access_token`
/// query parameter. An `Authorization` header of another scheme is not a token source.
pub fn find_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let bearer = headers.get_all(header::AUTHORIZATION).iter().find_map(|v| {
        let v = v.to_str().ok()?.trim_start();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_owned())
    });
    if bearer.is_some() {
        return bearer;
    }
    let cookie = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name.trim() == TOKEN_COOKIE).then(|| value.trim().trim_matches('"').to_owned())
        })
    });
    if cookie.is_some() {
        return cookie;
    }
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == TOKEN_QUERY).map(|(_, v)| v.into_owned())
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
        assert_eq!(find_token(&h, Some("topics=a&access_token=q")), Some("q".into()));
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; herald_token=c; b=2"));
        assert_eq!(find_token(&h, Some("access_token=q")), Some("c".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwdw=="));
        assert_eq!(find_token(&h, None), Some("c".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  h "));
        assert_eq!(find_token(&h, Some("access_token=q")), Some("h".into()));
        assert_eq!(find_token(&HeaderMap::new(), Some("topics=a")), None);
    }
}
