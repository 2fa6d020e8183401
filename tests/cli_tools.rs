// The keys in tests/fixtures/ are test-only keys, generated for these tests: they protect nothing.

//! The command-line tools of API.md ("Command-line tools"), driven as a user would: `herald token`'s tokens
//! verify against the keys and carry the claims; nonsense is refused with status 2.

use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "herald-test-secret-not-for-production";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

// ---------------------------------------------------------------------------------------------
// Running the tools
// ---------------------------------------------------------------------------------------------

/// `herald ARGS` with `stdin` as its standard input, run to its end: `(status, stdout, stderr)`.
/// `HERALD_*` variables of the test's own environment are removed, so only `env` counts.
fn tool(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (ExitStatus, String, String) {
    let mut cmd = tool_command(args, env);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn herald");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(T)
        .unwrap_or_else(|_| panic!("herald {args:?} still running after {T:?}"))
        .expect("wait for herald");
    let _ = writer.join();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn tool_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs a tool that must succeed and returns its stdout, trimmed.
fn tool_ok(args: &[&str], env: &[(&str, &str)], stdin: &str) -> String {
    let (status, stdout, stderr) = tool(args, env, stdin);
    assert!(status.success(), "herald {args:?}: {status}\nstdout: {stdout}\nstderr: {stderr}");
    stdout.trim().to_owned()
}

/// Runs a tool that must fail with `code`; returns its stderr.
fn tool_fails(args: &[&str], env: &[(&str, &str)], code: i32) -> String {
    let (status, stdout, stderr) = tool(args, env, "");
    assert_eq!(status.code(), Some(code), "herald {args:?}: {status}\nstdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.is_empty(), "herald {args:?} failed but printed on stdout: {stdout}");
    stderr
}

/// `herald token --jwt-secret SECRET …`.
fn token(grants: &[&str]) -> String {
    let mut args = vec!["token", "--jwt-secret", SECRET];
    args.extend_from_slice(grants);
    tool_ok(&args, &[], "")
}

// ---------------------------------------------------------------------------------------------
// herald token
// ---------------------------------------------------------------------------------------------

fn decode(token: &str, key: &DecodingKey, alg: Algorithm) -> Value {
    let mut validation = Validation::new(alg);
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(token, key, &validation)
        .unwrap_or_else(|e| panic!("token {token} does not verify as {alg:?}: {e}"));
    assert_eq!(data.header.alg, alg);
    data.claims
}

fn assert_times(claims: &Value, ttl: u64) {
    let (iat, exp) = (claims["iat"].as_u64().expect("iat"), claims["exp"].as_u64().expect("exp"));
    assert!(iat.abs_diff(now()) <= 60, "iat {iat} is not now ({})", now());
    assert_eq!(exp - iat, ttl, "exp - iat in {claims}");
}

#[test]
fn token_with_a_secret_verifies_and_carries_the_claims() {
    let token = token(&["--subscribe", "doc/*,user/7", "--subscribe", "news", "--publish", "doc/*", "--sub", "alice"]);
    let claims = decode(&token, &DecodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256);
    assert_eq!(claims["herald"], json!({"subscribe": ["doc/*", "user/7", "news"], "publish": ["doc/*"]}));
    assert_eq!(claims["sub"], "alice");
    assert_times(&claims, 3600);
    let keys: Vec<&String> = claims.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["herald", "sub", "iat", "exp"]);

    // The secret from the environment, like the server's; a token for subscribing only; every --ttl form.
    for (ttl, secs) in [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 604_800), ("90", 90)] {
        let token = tool_ok(&["token", "--subscribe", "*", "--ttl", ttl], &[("HERALD_JWT_SECRET", SECRET)], "");
        let claims = decode(&token, &DecodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256);
        assert_eq!(claims["herald"], json!({"subscribe": ["*"], "publish": []}));
        assert!(claims.get("sub").is_none(), "{claims}");
        assert_times(&claims, secs);
    }
}

#[test]
fn token_with_a_private_key_verifies_against_the_public_key() {
    for (private, public, alg) in
        [("rsa_private.pem", "rsa_public.pem", Algorithm::RS256), ("ec_private.pem", "ec_public.pem", Algorithm::ES256)]
    {
        let pem = std::fs::read(fixture(public)).expect("public key");
        let key = match alg {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            _ => DecodingKey::from_ec_pem(&pem),
        }
        .expect("decoding key");
        let by_flag =
            tool_ok(&["token", "--jwt-private-key", &fixture(private), "--publish", "a", "--ttl", "10m"], &[], "");
        let claims = decode(&by_flag, &key, alg);
        assert_eq!(claims["herald"], json!({"subscribe": [], "publish": ["a"]}));
        assert_times(&claims, 600);
        let by_env = tool_ok(&["token", "--publish", "a"], &[("HERALD_JWT_PRIVATE_KEY", &fixture(private))], "");
        decode(&by_env, &key, alg);
    }
}

#[test]
fn token_refuses_nonsense_with_status_2() {
    let secret = ["--jwt-secret", SECRET];
    let cases: Vec<(Vec<&str>, Vec<&str>, &str)> = vec![
        (vec!["--subscribe", "a", "--ttl", "soon"], secret.to_vec(), "--ttl"),
        (vec!["--subscribe", "a", "--ttl", "0"], secret.to_vec(), "--ttl"),
        (vec!["--subscribe", "a", "--ttl", "-1h"], secret.to_vec(), "--ttl"),
        (vec!["--subscribe", "a", "--ttl", "1w"], secret.to_vec(), "--ttl"),
        (vec!["--subscribe", "a"], vec![], "--jwt-secret"),
        (vec!["--subscribe", "a", "--jwt-private-key", "/nonexistent.pem"], secret.to_vec(), "not both"),
        (vec!["--subscribe", "a", "--jwt-private-key", "/nonexistent.pem"], vec![], "/nonexistent.pem"),
        (vec!["--subscribe", "a", "--jwt-secret", ""], vec![], "empty"),
        (vec![], secret.to_vec(), "--subscribe"),
        (vec!["--subscribe", "a*b"], secret.to_vec(), "a*b"),
        (vec!["--publish", "a b"], secret.to_vec(), "a b"),
    ];
    for (args, key, says) in cases {
        let mut all = vec!["token"];
        all.extend(&args);
        all.extend(&key);
        let stderr = tool_fails(&all, &[], 2);
        assert!(stderr.contains(says), "herald {all:?} must mention {says:?}: {stderr}");
    }
    // A public key is not a signing key.
    let public = fixture("rsa_public.pem");
    let stderr = tool_fails(&["token", "--subscribe", "a", "--jwt-private-key", &public], &[], 2);
    assert!(stderr.contains("private key"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

#[test]
fn help_lists_the_tools_and_each_tool_only_its_own_flags() {
    let help = tool_ok(&["--help"], &[], "");
    for name in ["serve", "token"] {
        assert!(help.contains(name), "herald --help does not list {name}:\n{help}");
    }
    for (name, flags) in
        [("token", &["--subscribe", "--publish", "--sub", "--ttl", "--jwt-secret", "--jwt-private-key"][..])]
    {
        let help = tool_ok(&[name, "--help"], &[], "");
        for flag in flags {
            assert!(help.contains(flag), "herald {name} --help does not list {flag}:\n{help}");
        }
        assert!(!help.contains("--listen"), "herald {name} --help lists the server's flags:\n{help}");
    }
}
