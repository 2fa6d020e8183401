//! Command line and environment configuration (`herald --help`).
//!
//! Every flag also reads `HERALD_<FLAG>`; precedence is flag, then environment, then default.
//! Cross-field rules are checked once, at start-up, by [`Config::validate`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::auth::{Auth, AuthSettings};
use crate::backend::redis::SentinelUrl;

/// Herald: real-time notifications over Server-Sent Events, with resumable history.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Config {
    /// What to do: `serve` (the default), or one of the command-line tools.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address and port to serve on (port 0 picks a free port, which is logged).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen, global = true)]
    pub listen: SocketAddr,

    /// Use Redis as the backend (redis://host:port[/db], rediss:// for TLS, or
    /// redis+sentinel://host:port[,host:port…]/master[/db] to follow the primary the Sentinels name, with
    /// the servers' password as in redis:// URLs); without it, the in-memory backend.
    #[arg(long, env = "HERALD_REDIS_URL", global = true)]
    pub redis_url: Option<String>,

    /// Password of the Sentinels of a redis+sentinel:// URL (the URL's password is the Redis servers').
    #[arg(long, env = "HERALD_REDIS_SENTINEL_PASSWORD", hide_env_values = true, global = true)]
    pub redis_sentinel_password: Option<String>,

    /// Redis: a publish answers once this many replicas have acknowledged the event (WAIT); when fewer did
    /// within --redis-wait-timeout it answers 200 with "replicated": false.
    #[arg(long, env = "HERALD_REDIS_WAIT_REPLICAS", default_value_t = 0, global = true)]
    pub redis_wait_replicas: u32,

    /// How long a publish waits for --redis-wait-replicas replicas, in milliseconds.
    #[arg(long, env = "HERALD_REDIS_WAIT_TIMEOUT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000), global = true)]
    pub redis_wait_timeout: u64,

    /// PEM file of the certificate authority to trust for a rediss:// Redis (default: the system's roots).
    #[arg(long, env = "HERALD_REDIS_CA_CERT", global = true)]
    pub redis_ca_cert: Option<std::path::PathBuf>,

    /// Events retained per topic for resuming clients.
    #[arg(long, env = "HERALD_HISTORY_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub history_size: u64,

    /// Memory backend: bound on all topics' history together, in bytes; past it the node's oldest events
    /// are evicted first (a client that missed them gets `herald.reset`).
    #[arg(long, env = "HERALD_MAX_HISTORY_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_history_bytes: u64,

    /// Also drop events older than this many seconds from each topic's history (fractions allowed);
    /// a client that was away longer gets `herald.reset` for the topics that lost events.
    #[arg(long, env = "HERALD_HISTORY_TTL", value_parser = parse_secs, global = true)]
    pub history_ttl: Option<Duration>,

    /// Seconds a stream may stay idle before a heartbeat comment is sent (fractions allowed).
    #[arg(long, env = "HERALD_HEARTBEAT", default_value = "15", value_parser = parse_secs, global = true)]
    pub heartbeat: Duration,

    /// The `retry:` reconnection hint sent to clients, in milliseconds.
    #[arg(long, env = "HERALD_RETRY", default_value_t = 3000, global = true)]
    pub retry: u64,

    /// Topics per subscription (after duplicates are merged) and per published event.
    #[arg(long, env = "HERALD_MAX_TOPICS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_topics: u64,

    /// Largest event data, in bytes.
    #[arg(long, env = "HERALD_MAX_EVENT_SIZE", default_value_t = 65536, global = true)]
    pub max_event_size: usize,

    /// Largest `/publish` request body, in bytes.
    #[arg(long, env = "HERALD_MAX_BODY_SIZE", default_value_t = 1_048_576, global = true)]
    pub max_body_size: usize,

    /// Event streams open at once; default: the open-files limit less a reserve for other sockets.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,

    /// Event streams open at once from one client address (the peer's, or the one a trusted proxy names);
    /// default: no such limit.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub max_connections_per_ip: Option<u32>,

    /// Events queued per connection before it counts as lagging (it is then caught up from history,
    /// or closed so that it resumes with its last id).
    #[arg(long, env = "HERALD_QUEUE_SIZE", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub queue_size: u64,

    /// Turn authentication on with an HS256 shared secret.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// Turn authentication on with a PEM public key file: an RSA key verifies RS256, an EC P-256 key ES256.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY", global = true)]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Topics anyone may subscribe to without a token (repeatable; a topic, a prefix ending in `*`, or `*`).
    #[arg(long, env = "HERALD_PUBLIC_TOPIC", value_delimiter = ',', global = true)]
    pub public_topic: Vec<String>,

    /// Allow open mode (no authentication) on a non-loopback address.
    #[arg(long, env = "HERALD_ALLOW_OPEN", global = true)]
    pub allow_open: bool,

    /// Allowed browser origins for CORS (repeatable; `*` for any).
    #[arg(long, env = "HERALD_CORS_ORIGIN", value_delimiter = ',', global = true)]
    pub cors_origin: Vec<String>,

    /// Seconds a client has to send a request's head, and a publish's body; a slower one gets 408 or is
    /// disconnected.
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT", default_value = "30", value_parser = parse_secs, global = true)]
    pub request_timeout: Duration,

    /// Seconds a stream may wait for its client to accept bytes before it is closed (a client that stopped
    /// reading; it resumes with its last event id when it reads again). Like nginx's `send_timeout`.
    #[arg(long, env = "HERALD_SEND_TIMEOUT", default_value = "60", value_parser = parse_secs, global = true)]
    pub send_timeout: Duration,

    /// Concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS): a proxy that speaks
    /// HTTP/2 to Herald carries this many subscribers on one connection.
    #[arg(long, env = "HERALD_H2_MAX_STREAMS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub h2_max_streams: u32,

    /// PEM file of the certificate chain to serve HTTPS with (HTTP/2 and HTTP/1.1 offered by ALPN); needs
    /// --tls-key. Both files are read again on SIGHUP.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM file of the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<std::path::PathBuf>,

    /// Peers whose X-Forwarded-For / Forwarded headers name the client, for logs and per-address limits
    /// (repeatable or comma-separated; an address or a range such as 10.0.0.0/8). Others' are ignored.
    #[arg(long, env = "HERALD_TRUSTED_PROXY", value_delimiter = ',', global = true)]
    pub trusted_proxy: Vec<crate::http::client::Cidr>,

    /// Folder served at `/` instead of the built-in demo page (`index.html` for `/` and directories); `''`
    /// serves none. `/herald.js` is always served: from the folder if it has one, else built in.
    #[arg(long, env = "HERALD_STATIC_DIR", global = true)]
    pub static_dir: Option<String>,

    /// Seconds given to open streams and in-flight publishes at shutdown.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "10", value_parser = parse_secs, global = true)]
    pub shutdown_grace: Duration,

    /// Log format on stderr.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve (the default).
    Serve,
    /// The command-line tools (`token`, `publish`, `tail`). `main` parses their command lines with
    /// [`crate::cli::Tools`], which has their flags only; they are here so that `herald --help` lists them.
    #[command(flatten)]
    Tool(crate::cli::Tool),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why a configuration cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Open mode on an address other hosts can reach, without `--allow-open`.
    #[error(
        "refusing to serve without authentication on non-loopback address {0}: \
         pass --allow-open (HERALD_ALLOW_OPEN=true) to allow open mode there"
    )]
    OpenOnPublicAddress(SocketAddr),
    /// `--redis-url` is not a Redis URL.
    #[error(
        "--redis-url {0:?} is not a redis URL (redis://[:password@]host:port[/db], or \
         redis+sentinel://[:password@]host:port[,host:port…]/master[/db]): {1}"
    )]
    BadRedisUrl(String, String),
    /// A limit that makes no sense with another.
    #[error("{0}")]
    Invalid(String),
}

/// An `IP:PORT`, or `HOST:PORT` resolved once at start-up (`localhost:8080` is the loopback address).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| format!("{s:?} is not an address and port: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        return Err(format!("{s:?}: seconds must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Streams kept free of `--max-connections` when it is derived from the open-files limit: the listener,
/// publishers, metrics scrapes and backend connections need descriptors too.
const FD_RESERVE: u64 = 100;

impl Config {
    /// Checks cross-field rules.
    ///
    /// # Errors
    /// A [`ConfigError`] saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Reads and checks the key now, so that a bad one stops start-up with a clear message.
        let auth = self.auth()?;
        if auth.is_none() && !self.listen.ip().is_loopback() && !self.allow_open {
            return Err(ConfigError::OpenOnPublicAddress(self.listen));
        }
        if let Some(url) = &self.redis_url {
            crate::backend::redis::validate_url(url).map_err(|e| ConfigError::BadRedisUrl(url.clone(), e))?;
        }
        let sentinel = self.redis_url.as_deref().is_some_and(|u| u.starts_with(SentinelUrl::SCHEME));
        if self.redis_sentinel_password.is_some() && !sentinel {
            return Err(ConfigError::Invalid(format!(
                "--redis-sentinel-password applies to a {} --redis-url only",
                SentinelUrl::SCHEME
            )));
        }
        if self.redis_wait_replicas > 0 && self.redis_url.is_none() {
            return Err(ConfigError::Invalid(
                "--redis-wait-replicas applies to the Redis backend (--redis-url)".into(),
            ));
        }
        if self.redis_ca_cert.is_some() {
            if !self.redis_url.as_deref().is_some_and(|u| u.starts_with("rediss://")) {
                return Err(ConfigError::Invalid("--redis-ca-cert applies to a rediss:// --redis-url only".into()));
            }
            self.redis_ca_pem()?;
        }
        if self.max_event_size == 0 || self.max_body_size == 0 {
            return Err(ConfigError::Invalid("--max-event-size and --max-body-size must be positive".into()));
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::Invalid("--max-connections must be positive".into()));
        }
        self.static_site()?;
        self.tls()?;
        Ok(())
    }

    /// The contents of `--redis-ca-cert`, checked to hold a PEM certificate.
    ///
    /// # Errors
    /// The file cannot be read or holds no certificate.
    pub fn redis_ca_pem(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.redis_ca_cert else { return Ok(None) };
        let pem = std::fs::read(path)
            .map_err(|e| ConfigError::Invalid(format!("--redis-ca-cert {}: cannot read: {e}", path.display())))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::Invalid(format!(
                "--redis-ca-cert {}: no PEM certificate (BEGIN CERTIFICATE) in it",
                path.display()
            )));
        }
        Ok(Some(pem))
    }

    /// What `--static-dir` asks to serve, its folder checked.
    ///
    /// # Errors
    /// The folder does not exist or is not a directory.
    pub fn static_site(&self) -> Result<crate::http::StaticSite, ConfigError> {
        crate::http::StaticSite::from_dir(self.static_dir.as_deref()).map_err(|e| {
            let dir = self.static_dir.as_deref().unwrap_or_default();
            ConfigError::Invalid(format!("--static-dir {dir:?}: {e} (give a folder, or '' to serve none)"))
        })
    }

    /// The certificate and key of `--tls-cert` / `--tls-key`, read and checked: `None` without them.
    ///
    /// # Errors
    /// A file cannot be read, holds no certificate or no key, or the key does not match the certificate.
    pub fn tls(&self) -> Result<Option<crate::server::TlsFiles>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let files = crate::server::TlsFiles { cert: cert.clone(), key: key.clone() };
        files.load().map_err(ConfigError::Invalid)?;
        Ok(Some(files))
    }

    /// The flags that concern authentication.
    pub fn auth_settings(&self) -> AuthSettings {
        AuthSettings {
            jwt_secret: self.jwt_secret.clone(),
            jwt_public_key: self.jwt_public_key.clone(),
            public_topics: self.public_topic.clone(),
            cookie_origins: self.cors_origin.iter().filter(|o| o.trim() != "*").cloned().collect(),
        }
    }

    /// The authenticator these flags ask for: `None` in open mode.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when the key cannot be used or the flags contradict each other.
    pub fn auth(&self) -> Result<Option<Auth>, ConfigError> {
        Auth::new(&self.auth_settings()).map_err(|e| ConfigError::Invalid(e.0))
    }

    /// Whether authentication is on: a key is configured.
    pub fn auth_enabled(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }

    /// The stream limit: `--max-connections`, or the open-files limit (raised to its hard maximum
    /// first) less a reserve.
    pub fn effective_max_connections(&self) -> usize {
        if let Some(n) = self.max_connections {
            return n;
        }
        let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
        usize::try_from(limit.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX)
    }
}
