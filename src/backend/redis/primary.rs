//! Where the Redis primary is, and the node's connections to it.
//!
//! With a `redis://` (or `rediss://`) URL the primary is that server. With
//! `redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]` it is whichever server the Sentinels
//! name as the primary of `MASTER` (the redis crate's [`Sentinel`] asks them, and checks with `ROLE` that the
//! server it names really is a primary before handing it out).
//!
//! The command connections (publishes, history reads, the dedicated connections of waited publishes) form
//! one [`Link`] to one server. The feed task (`feed.rs`) owns the decision of which server that is: it
//! [`Primary::locate`]s the primary before each pub/sub session, and during a session checks it — `ROLE` on
//! the command connection every [`ROLE_CHECK_INTERVAL`], the Sentinels every [`SENTINEL_POLL_INTERVAL`],
//! and at once when woken through [`Primary::suspect`] (a publish answered `READONLY` or lost its
//! connection) or [`Primary::switched`] (a Sentinel announced `+switch-master`; this one also cuts short
//! the feed's wait between two attempts to connect). When the primary moved, a new link replaces the
//! old one, so that every request from then on goes to the new primary, and nothing is ever written to a
//! server that is known to be a replica. Requests already under way on the old link finish or fail there
//! (a replica refuses writes with `READONLY`: nothing is written).

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, TlsCertificates, Value};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use super::{RedisSettings, COMMAND_TIMEOUT};
use crate::metrics::Metrics;

/// How often the feed checks with `ROLE` that the server it talks to is still a primary.
pub(super) const ROLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the feed asks the Sentinels where the primary is, besides listening for `+switch-master`
/// (a missed announcement would otherwise pin the node to a demoted server).
pub(super) const SENTINEL_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The longest a Sentinel lookup may take (it asks up to three Sentinels at once and checks the server it
/// names with `ROLE`).
const LOCATE_TIMEOUT: Duration = Duration::from_secs(3);
/// Dedicated connections a node keeps at most for publishes that wait for replicas (`WAIT` blocks the
/// connection it runs on): as many waited publishes run at once; more wait for a connection.
pub(super) const WAIT_CONNECTIONS: usize = 16;
/// The Sentinels' default port.
const SENTINEL_PORT: u16 = 26379;

/// A `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// The Sentinels' addresses.
    pub sentinels: Vec<(String, u16)>,
    /// The name the Sentinels monitor the primary under.
    pub master: String,
    /// The Redis servers' user name (ACL), if any.
    pub username: Option<String>,
    /// The Redis servers' password, if any.
    pub password: Option<String>,
    /// The database number on the Redis servers.
    pub db: i64,
}

impl SentinelUrl {
    /// The URL scheme.
    pub const SCHEME: &'static str = "redis+sentinel://";

    /// Parses `redis+sentinel://[[user]:password@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB]` (user and
    /// password percent-encoded; a port left out is 26379; IPv6 hosts in brackets).
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix(Self::SCHEME).ok_or_else(|| format!("not a {} URL", Self::SCHEME))?;
        let (authority, path) = rest.split_once('/').ok_or("no /MASTER after the Sentinels' addresses")?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let decode = |s: &str| -> Result<Option<String>, String> {
                    let text = percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .map_err(|_| "the user name or password is not UTF-8 once decoded".to_string())?;
                    Ok(Some(text.into_owned()).filter(|t| !t.is_empty()))
                };
                (decode(user)?, decode(password)?)
            }
        };
        let sentinels = hosts.split(',').map(parse_host).collect::<Result<Vec<_>, _>>()?;
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or_default();
        if master.is_empty() {
            return Err("no MASTER name after the Sentinels' addresses".into());
        }
        let master = percent_encoding::percent_decode_str(master)
            .decode_utf8()
            .map_err(|_| "the MASTER name is not UTF-8 once decoded")?
            .into_owned();
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) => {
                db.parse::<i64>().ok().filter(|db| *db >= 0).ok_or(format!("{db:?} is not a database number"))?
            }
        };
        if parts.any(|p| !p.is_empty()) {
            return Err("more than /MASTER/DB after the Sentinels' addresses".into());
        }
        Ok(SentinelUrl { sentinels, master, username, password, db })
    }
}

/// `HOST[:PORT]`, `[IPv6][:PORT]`.
fn parse_host(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("{s:?} is not a Sentinel address (HOST:PORT)");
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, rest) = v6.split_once(']').ok_or_else(bad)?;
        match rest.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if rest.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(['@', '/', ' ']) {
        return Err(bad());
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
    };
    Ok((host.to_string(), port))
}

/// Checks a `--redis-url`: a Redis URL the redis crate accepts, or a `redis+sentinel://` URL.
///
/// # Errors
/// What is wrong with it.
pub fn validate_url(url: &str) -> Result<(), String> {
    if url.starts_with(SentinelUrl::SCHEME) {
        SentinelUrl::parse(url).map(|_| ())
    } else {
        redis::Client::open(url).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Where the primary is found.
enum Target {
    /// One fixed server.
    Fixed(redis::Client),
    /// Through Sentinels.
    Sentinel {
        /// The redis crate's Sentinel client (it caches a connection per Sentinel).
        sentinel: tokio::sync::Mutex<Sentinel>,
        /// The Sentinels, for the `+switch-master` listener.
        sentinels: Vec<ConnectionInfo>,
        /// How to connect to the servers the Sentinels name.
        node: SentinelNodeConnectionInfo,
        master: String,
    },
}

/// The command connections to one server: the one a publish, a history read or a waited publish uses
/// while it is the primary.
pub(super) struct Link {
    /// The server (the pub/sub connection is made from it).
    pub(super) client: redis::Client,
    /// Publishes and small commands (one multiplexed connection that reconnects by itself).
    pub(super) commands: ConnectionManager,
    /// History reads (see `history.rs`).
    pub(super) reads: ConnectionManager,
    /// Dedicated connections for publishes that wait for replicas.
    pub(super) exclusive: Exclusive,
    /// `host:port/db`, for logs.
    pub(super) addr: String,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Link {
    /// After the pub/sub connection to this server was lost: sends `PING` on the command connections, so
    /// that one that died with it is found dead now and replaced (a publish then fails at once, as never
    /// sent, while the server is unreachable, instead of being written into a dead connection and settled),
    /// and closes the idle dedicated connections.
    pub(super) async fn refresh(&self) {
        let ping = |con: &ConnectionManager| {
            let mut con = con.clone();
            async move {
                let _ = tokio::time::timeout(COMMAND_TIMEOUT, redis::cmd("PING").query_async::<Value>(&mut con)).await;
            }
        };
        tokio::join!(ping(&self.commands), ping(&self.reads));
        self.exclusive.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// A printable address of a client's server (`host:port/db`, no password).
fn describe(client: &redis::Client) -> String {
    let info = client.get_connection_info();
    format!("{}/{}", info.addr(), info.redis_settings().db())
}

/// The primary and the current link to it. See the module docs.
pub(super) struct Primary {
    target: Target,
    config: ConnectionManagerConfig,
    link: RwLock<Option<Arc<Link>>>,
    /// Wakes the feed to check the primary now.
    check: Notify,
    /// Wakes the feed when a Sentinel announced a new primary.
    switch: Notify,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary").field("target", &self.describe_target()).finish_non_exhaustive()
    }
}

impl Primary {
    /// The primary of `connect.url`. With a fixed URL the link exists at once (its connections are made on
    /// first use); with Sentinels, once [`Primary::locate`] found the primary.
    ///
    /// # Errors
    /// The URL cannot be used.
    pub(super) fn new(connect: &RedisSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let (target, link) = if connect.url.starts_with(SentinelUrl::SCHEME) {
            let url = SentinelUrl::parse(&connect.url).map_err(|e| format!("bad --redis-url: {e}"))?;
            let mut sentinel_settings = RedisConnectionInfo::default();
            if let Some(password) = &connect.sentinel_password {
                sentinel_settings = sentinel_settings.set_password(password);
            }
            let sentinels = url
                .sentinels
                .iter()
                .map(|(host, port)| {
                    (host.as_str(), *port)
                        .into_connection_info()
                        .map(|i| i.set_redis_settings(sentinel_settings.clone()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("bad --redis-url: {e}"))?;
            let sentinel = Sentinel::build(sentinels.clone()).map_err(|e| format!("bad --redis-url: {e}"))?;
            let mut server = RedisConnectionInfo::default().set_db(url.db);
            if let Some(user) = &url.username {
                server = server.set_username(user);
            }
            if let Some(password) = &url.password {
                server = server.set_password(password);
            }
            let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(server);
            let sentinel = tokio::sync::Mutex::new(sentinel);
            (Target::Sentinel { sentinel, sentinels, node, master: url.master }, None)
        } else {
            let client = match &connect.ca_cert {
                // rediss:// trusting this authority rather than the system's roots.
                Some(pem) => redis::Client::build_with_tls(
                    connect.url.as_str(),
                    TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
                ),
                None => redis::Client::open(connect.url.as_str()),
            }
            .map_err(|e| format!("bad --redis-url: {e}"))?;
            let link = Self::link_to(client.clone(), &config)?;
            (Target::Fixed(client), Some(Arc::new(link)))
        };
        Ok(Primary { target, config, link: RwLock::new(link), check: Notify::new(), switch: Notify::new(), metrics })
    }

    fn link_to(client: redis::Client, config: &ConnectionManagerConfig) -> Result<Link, String> {
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| format!("redis: {e}"))?;
        // History reads get their own connection: a resume's replies never queue in front of publishes.
        let reads = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| format!("redis: {e}"))?;
        let exclusive = Exclusive::new(client.clone());
        Ok(Link { addr: describe(&client), client, commands, reads, exclusive })
    }

    /// Whether the primary is found through Sentinels.
    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel { .. })
    }

    /// For logs: the server, or the Sentinels' master name.
    pub(super) fn describe_target(&self) -> String {
        match &self.target {
            Target::Fixed(client) => describe(client),
            Target::Sentinel { master, sentinels, .. } => {
                let addrs: Vec<String> = sentinels.iter().map(|s| s.addr().to_string()).collect();
                format!("sentinel master {master} via {}", addrs.join(","))
            }
        }
    }

    /// The current link, if a primary is known.
    pub(super) fn link(&self) -> Option<Arc<Link>> {
        self.link.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Asks the feed to check the primary now: a request met a sign that it may have changed (a `READONLY`
    /// reply, a lost connection).
    pub(super) fn suspect(&self) {
        self.check.notify_one();
    }

    /// Resolves when someone [`Primary::suspect`]ed a change.
    pub(super) async fn suspected(&self) {
        self.check.notified().await;
    }

    /// Resolves when a Sentinel announced a new primary (`+switch-master`).
    pub(super) async fn switched(&self) {
        self.switch.notified().await;
    }

    /// Finds the primary and makes the link point at it: a fixed URL's server, or the server the Sentinels
    /// name (checked by them to answer `ROLE` as a primary). When that is another server than the current
    /// link's, a new link replaces it (counted in `herald_backend_primary_changes_total`).
    ///
    /// # Errors
    /// No Sentinel could name a primary in time.
    pub(super) async fn locate(&self) -> Result<Arc<Link>, String> {
        let Target::Sentinel { sentinel, node, master, .. } = &self.target else {
            return self.link().ok_or_else(|| "no redis link".to_string());
        };
        let found = tokio::time::timeout(LOCATE_TIMEOUT, async {
            let mut sentinel = sentinel.lock().await;
            sentinel.async_master_for(master, Some(node)).await
        })
        .await;
        let client = match found {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(format!("the sentinels name no primary for {master}: {e}")),
            Err(_) => return Err(format!("no sentinel named a primary for {master} within {LOCATE_TIMEOUT:?}")),
        };
        let mut current = self.link.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = current.as_ref() {
            if link.client.get_connection_info().addr() == client.get_connection_info().addr() {
                return Ok(link.clone());
            }
        }
        let link = Arc::new(Self::link_to(client, &self.config)?);
        match current.replace(link.clone()) {
            Some(old) => {
                Metrics::inc(&self.metrics.backend_primary_changes);
                tracing::warn!(from = %old.addr, to = %link.addr, %master, "redis primary moved; following it");
            }
            None => tracing::info!(primary = %link.addr, %master, "the sentinels name the redis primary"),
        }
        Ok(link)
    }

    /// Stops using `link` (its server is not the primary any more), so that requests answer 503 at once
    /// instead of writing to it, until [`Primary::locate`] finds the primary. A fixed URL keeps its link:
    /// there is no other server to go to, and a replica refuses writes anyway.
    pub(super) fn forget(&self, link: &Arc<Link>) {
        if !self.is_sentinel() {
            return;
        }
        let mut current = self.link.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *current = None;
        }
    }

    /// Asks `link`'s server for its `ROLE`: `Ok(true)` for a primary, `Ok(false)` for a replica (or anything
    /// else that cannot take writes).
    ///
    /// # Errors
    /// The server did not answer within `timeout`.
    pub(super) async fn is_primary(link: &Link, timeout: Duration) -> Result<bool, String> {
        let mut con = link.commands.clone();
        match tokio::time::timeout(timeout, redis::cmd("ROLE").query_async::<Value>(&mut con)).await {
            Ok(Ok(Value::Array(parts))) => Ok(parts.first().and_then(super::scripts::text) == Some("master")),
            Ok(Ok(other)) => Err(format!("ROLE answered {other:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer to ROLE within {timeout:?}")),
        }
    }

    /// Listens for the Sentinels' `+switch-master` announcements and wakes the feed on each one about this
    /// primary (a task; `None` with a fixed URL). Goes from Sentinel to Sentinel when one fails.
    pub(super) fn spawn_switch_listener(self: &Arc<Self>) -> Option<tokio_util::task::AbortOnDropHandle<()>> {
        let Target::Sentinel { sentinels, master, .. } = &self.target else { return None };
        let (sentinels, master, primary) = (sentinels.clone(), master.clone(), Arc::downgrade(self));
        let task = tokio::spawn(async move {
            for info in sentinels.iter().cycle() {
                let cause = listen_for_switches(info.clone(), &master, &primary).await;
                if primary.strong_count() == 0 {
                    return;
                }
                tracing::debug!(sentinel = %info.addr(), %cause, "sentinel +switch-master listener; trying the next one");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Some(tokio_util::task::AbortOnDropHandle::new(task))
    }
}

/// Subscribes to `+switch-master` on one Sentinel and wakes the feed on each switch of `master`, until the
/// connection fails; returns why.
async fn listen_for_switches(info: ConnectionInfo, master: &str, primary: &std::sync::Weak<Primary>) -> String {
    let client = match redis::Client::open(info) {
        Ok(client) => client,
        Err(e) => return e.to_string(),
    };
    let mut pubsub = match tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return e.to_string(),
        Err(_) => return format!("no connection within {COMMAND_TIMEOUT:?}"),
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, pubsub.subscribe("+switch-master")).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e.to_string(),
        Err(_) => return format!("no subscription within {COMMAND_TIMEOUT:?}"),
    }
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        // "<master name> <old ip> <old port> <new ip> <new port>"
        let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
        if payload.split(' ').next() == Some(master) {
            let Some(primary) = primary.upgrade() else { return "stopped".into() };
            tracing::info!(switch = %payload, "a sentinel announced a new redis primary");
            primary.switch.notify_one();
        }
    }
    "connection closed".into()
}

/// Dedicated connections for publishes that wait for replicas: `WAIT` blocks the connection it runs on,
/// and must run on the connection that wrote. Each waited publish takes one connection for itself (at
/// most [`WAIT_CONNECTIONS`] at once), so the others flow on their own connections meanwhile.
pub(super) struct Exclusive {
    client: redis::Client,
    idle: Mutex<Vec<MultiplexedConnection>>,
    permits: Semaphore,
}

/// One connection of an [`Exclusive`] pool, taken; given back on drop unless it failed.
pub(super) struct Lease<'a> {
    pool: &'a Exclusive,
    con: MultiplexedConnection,
    /// Given back to the pool on drop (cleared by [`Lease::discard`]).
    keep: bool,
    _permit: SemaphorePermit<'a>,
}

impl Exclusive {
    fn new(client: redis::Client) -> Self {
        Exclusive { client, idle: Mutex::new(Vec::new()), permits: Semaphore::new(WAIT_CONNECTIONS) }
    }

    /// Takes a connection: an idle one, or a new one, once fewer than [`WAIT_CONNECTIONS`] are taken.
    ///
    /// # Errors
    /// None became free, or a new one could not be made, within [`COMMAND_TIMEOUT`].
    pub(super) async fn take(&self) -> Result<Lease<'_>, String> {
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        let permit = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => {
                return Err(format!("no connection for a waited publish within {COMMAND_TIMEOUT:?}"))
            }
        };
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let con = match idle {
            Some(con) => con,
            None => {
                // No response timeout of its own: each command is bounded by its caller (WAIT by its own).
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(None);
                match tokio::time::timeout_at(
                    deadline,
                    self.client.get_multiplexed_async_connection_with_config(&config),
                )
                .await
                {
                    Ok(Ok(con)) => con,
                    Ok(Err(e)) => return Err(format!("redis: {e}")),
                    Err(_) => return Err(format!("redis: no connection within {COMMAND_TIMEOUT:?}")),
                }
            }
        };
        Ok(Lease { pool: self, con, keep: true, _permit: permit })
    }
}

impl Lease<'_> {
    /// The connection.
    pub(super) fn con(&mut self) -> &mut MultiplexedConnection {
        &mut self.con
    }

    /// Closes the connection instead of giving it back (it failed, or a command on it was abandoned).
    pub(super) fn discard(mut self) {
        self.keep = false;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.keep {
            // A clone shares the one connection; this lease's handle goes with it.
            self.pool.idle.lock().unwrap_or_else(PoisonError::into_inner).push(self.con.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let url = SentinelUrl::parse("redis+sentinel://:s%40cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2")
            .expect("valid");
        assert_eq!(
            url,
            SentinelUrl {
                sentinels: vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26379), ("::1".into(), 26380)],
                master: "mymaster".into(),
                username: None,
                password: Some("s@cret".into()),
                db: 2,
            }
        );
        let url = SentinelUrl::parse("redis+sentinel://app:pw@h:1/m").expect("valid");
        assert_eq!((url.username.as_deref(), url.password.as_deref(), url.db), (Some("app"), Some("pw"), 0));
        assert_eq!(SentinelUrl::parse("redis+sentinel://h:1/m/").expect("valid").db, 0);
        for bad in [
            "redis://h:1/m",
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h:x/m",
            "redis+sentinel://h:0/m",
            "redis+sentinel://h:1,/m",
            "redis+sentinel://h:1/m/x",
            "redis+sentinel://h:1/m/-1",
            "redis+sentinel://h:1/m/1/2",
            "redis+sentinel://[::1/m",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(validate_url("redis+sentinel://h/m").is_ok());
        assert!(validate_url("redis://h:1/0").is_ok());
        assert!(validate_url("http://h").is_err());
    }
}
