//! `herald token`: prints a JWT signed with the key a server is configured with, for development and
//! scripts.
//!
//! The claims are the ones Herald reads (API.md, "Authentication"), plus `sub`, `iat` and `exp`:
//! `{"herald":{"subscribe":[…],"publish":[…]},"sub":"…","iat":…,"exp":…}`. The key is `--jwt-secret`
//! (HS256, the same flag and variable as the server's) or `--jwt-private-key FILE`: a PEM private key, RSA
//! for RS256 or EC P-256 for ES256, whose public half the server is given with `--jwt-public-key`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::Failure;

/// Longest `--ttl`: ten years, far past any development need, and far from overflowing `exp`.
const MAX_TTL: Duration = Duration::from_secs(3650 * 86_400);

/// `herald token`'s flags.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("grants").required(true).multiple(true))]
pub struct TokenArgs {
    /// Topic patterns the token may subscribe to: a topic, a prefix ending in `*`, or `*` (repeatable or
    /// comma-separated).
    #[arg(long, value_name = "PATTERN", num_args = 1.., value_delimiter = ',', env = "HERALD_SUBSCRIBE", group = "grants")]
    pub subscribe: Vec<String>,

    /// Topic patterns the token may publish to (repeatable or comma-separated).
    #[arg(long, value_name = "PATTERN", num_args = 1.., value_delimiter = ',', env = "HERALD_PUBLISH", group = "grants")]
    pub publish: Vec<String>,

    /// The `sub` claim: who the token is for (Herald does not read it; logs and other services may).
    #[arg(long, value_name = "NAME", env = "HERALD_SUB")]
    pub sub: Option<String>,

    /// How long the token is valid: `30s`, `15m`, `1h`, `7d` or a number of seconds (decimals allowed).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl, allow_hyphen_values = true, env = "HERALD_TTL")]
    pub ttl: Duration,

    /// Sign with this HS256 shared secret (the server's `--jwt-secret`).
    #[arg(long, value_name = "S", env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Sign with this PEM private key: RSA for RS256, EC P-256 for ES256 (the server gets the public key
    /// with `--jwt-public-key`).
    #[arg(long, value_name = "FILE", env = "HERALD_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
}

/// Reads a duration: a number followed by `s`, `m`, `h` or `d`, or alone for seconds. At least one second,
/// at most ten years.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let help = "a duration such as 30s, 15m, 1h or 7d (or a number of seconds)";
    let t = s.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let scale: f64 = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        _ => return Err(format!("{s:?} is not {help}: the unit must be s, m, h or d")),
    };
    // Digits and at most one point only: no sign, exponent, `inf` or `nan`.
    let plain = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|&b| b == b'.').count() <= 1
        && number.bytes().any(|b| b.is_ascii_digit());
    let value: f64 = match number.parse() {
        Ok(v) if plain => v,
        _ => return Err(format!("{s:?} is not {help}")),
    };
    let secs = (value * scale).round();
    if secs < 1.0 {
        return Err(format!("{s:?}: a token must be valid for at least 1s"));
    }
    if secs > MAX_TTL.as_secs_f64() {
        return Err(format!("{s:?}: at most 3650d (ten years)"));
    }
    Ok(Duration::from_secs(secs as u64))
}

/// Checks a pattern as the server will read it: a topic, a prefix ending in `*`, or `*`.
fn check_pattern(flag: &str, pattern: &str) -> Result<(), Failure> {
    let topic = pattern.strip_suffix('*').unwrap_or(pattern);
    let ok = (topic.is_empty() && pattern == "*") || crate::topic::validate_topic(topic).is_ok();
    if ok {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{flag} {pattern:?} is not a topic, a prefix ending in *, or * (a topic is 1 to 256 bytes of printable \
             ASCII other than space , * ? #)"
        )))
    }
}

/// The key and algorithm the flags name.
fn signing_key(args: &TokenArgs) -> Result<(EncodingKey, Algorithm), Failure> {
    match (&args.jwt_secret, &args.jwt_private_key) {
        (Some(_), Some(_)) => Err(Failure::usage(
            "give --jwt-secret or --jwt-private-key, not both (check HERALD_JWT_SECRET and HERALD_JWT_PRIVATE_KEY)",
        )),
        (None, None) => Err(Failure::usage(
            "no key to sign with: give --jwt-secret S (HS256) or --jwt-private-key FILE (RS256/ES256), or set \
             HERALD_JWT_SECRET or HERALD_JWT_PRIVATE_KEY",
        )),
        (Some(secret), None) if secret.is_empty() => Err(Failure::usage("--jwt-secret is empty")),
        (Some(secret), None) => Ok((EncodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)),
        (None, Some(path)) => private_key(path),
    }
}

/// Reads a PEM private key: RSA gives RS256, EC (P-256) ES256.
fn private_key(path: &std::path::Path) -> Result<(EncodingKey, Algorithm), Failure> {
    let shown = path.display();
    let pem =
        std::fs::read(path).map_err(|e| Failure::usage(format!("--jwt-private-key {shown}: cannot read: {e}")))?;
    // jsonwebtoken would take an RSA public key as a signing key, and then fail to sign with it.
    if !String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----") {
        return Err(Failure::usage(format!(
            "--jwt-private-key {shown}: not a PEM private key (BEGIN PRIVATE KEY); the server gets the public key, \
             this tool the private one"
        )));
    }
    let sec1 = String::from_utf8_lossy(&pem).contains("-----BEGIN EC PRIVATE KEY-----");
    let not_usable = || {
        let hint = if sec1 { "; convert this SEC1 key with `openssl pkcs8 -topk8 -nocrypt -in FILE`" } else { "" };
        Failure::usage(format!(
            "--jwt-private-key {shown}: not a PEM RSA or EC P-256 private key (PKCS#8 or, for RSA, PKCS#1){hint}"
        ))
    };
    let key = if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
        (key, Algorithm::RS256)
    } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
        (key, Algorithm::ES256)
    } else {
        return Err(not_usable());
    };
    // Reading the PEM does not check the curve (a P-384 key reads as EC): signing does.
    jsonwebtoken::encode(&Header::new(key.1), &serde_json::json!({}), &key.0).map_err(|_| not_usable())?;
    Ok(key)
}

/// The claims of a token made now.
fn claims(args: &TokenArgs, now: Duration) -> serde_json::Value {
    let iat = now.as_secs();
    let mut claims = serde_json::json!({
        "herald": { "subscribe": args.subscribe, "publish": args.publish },
    });
    if let Some(sub) = &args.sub {
        claims["sub"] = sub.as_str().into();
    }
    claims["iat"] = iat.into();
    claims["exp"] = (iat + args.ttl.as_secs()).into();
    claims
}

/// Prints the token on stdout.
pub(crate) fn run(args: &TokenArgs) -> Result<(), Failure> {
    for pattern in &args.subscribe {
        check_pattern("--subscribe", pattern)?;
    }
    for pattern in &args.publish {
        check_pattern("--publish", pattern)?;
    }
    let (key, algorithm) = signing_key(args)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let token = jsonwebtoken::encode(&Header::new(algorithm), &claims(args, now), &key)
        .map_err(|e| Failure::failed(format!("cannot sign: {e}")))?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl(" 2H "), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_ttl("3650d"), Ok(MAX_TTL));
    }

    #[test]
    fn ttl_nonsense_is_refused() {
        for bad in ["", "h", "0", "0s", "0.1s", "-1h", "+1h", "1e3", "inf", "nan", "1w", "1 h x", "1..2s", ".", "3651d"]
        {
            assert!(parse_ttl(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn patterns_are_checked_like_the_servers() {
        for good in ["*", "doc/*", "doc/42", "https://example.com/books/1"] {
            assert!(check_pattern("--subscribe", good).is_ok(), "{good}");
        }
        for bad in ["", "a*b", "a b", "**", "a,b", "*a"] {
            assert!(check_pattern("--subscribe", bad).is_err(), "{bad}");
        }
    }
}
