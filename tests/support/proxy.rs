//! Real reverse proxies in front of the real binary: nginx, HAProxy and Caddy from Debian's packages, each
//! started by the test with a configuration written to a folder of its own, listening on a free loopback
//! port, and stopped by its PID. A missing binary fails the test with what to install (`tests/run.sh`
//! installs them).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::scratch::TempDir;

/// Bound for a proxy to start listening.
const PROXY_START: Duration = Duration::from_secs(15);

/// A free loopback port (bound, read, released: another process could take it in between, which is rare).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The path of `name` on `PATH` or in `/usr/sbin` (where Debian puts nginx and haproxy).
///
/// # Panics
/// When it is not installed, naming the Debian package to install.
pub fn binary(name: &str, package: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').chain(["/usr/sbin", "/usr/local/sbin", "/sbin"]) {
        let candidate = std::path::Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate.to_string_lossy().into_owned();
        }
    }
    panic!("`{name}` not found: install the Debian package `{package}` (tests/run.sh installs it when missing)");
}

/// A running proxy, killed on drop.
pub struct Proxy {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Its configuration and logs.
    pub dir: TempDir,
    name: &'static str,
}

impl Proxy {
    /// Writes `config` to `file` in a folder of its own, runs `program args` (`{dir}` in an argument or in
    /// the configuration is that folder) and waits until `port` accepts connections.
    ///
    /// # Panics
    /// When it exits or does not listen within 15 s; the message holds its output.
    pub fn start(name: &'static str, program: &str, args: &[&str], file: &str, config: &str, port: u16) -> Proxy {
        let dir = TempDir::new(name);
        let dir_path = dir.path().to_str().expect("utf-8 dir").to_string();
        let config = config.replace("{dir}", &dir_path);
        dir.write(file, config.as_bytes());
        let log = std::fs::File::create(dir.path().join("output.log")).expect("log file");
        let child = Command::new(program)
            .args(args.iter().map(|a| a.replace("{dir}", &dir_path)))
            .current_dir(dir.path())
            .env("HOME", &dir_path)
            .env("XDG_DATA_HOME", &dir_path)
            .env("XDG_CONFIG_HOME", &dir_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut proxy = Proxy { child, addr, dir, name };
        let deadline = Instant::now() + PROXY_START;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("{name} exited ({status}) before listening:\n{config}\n{}", proxy.output());
            }
            assert!(
                Instant::now() < deadline,
                "{name} not listening on {addr} within {PROXY_START:?}:\n{}",
                proxy.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    /// What it printed, and its error log when it has one.
    pub fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{} output:\n{}{}", self.name, read("output.log"), read("error.log"))
    }

    /// nginx (one process, no daemon) with `http_block` as the body of its `http { }` block. Temporary
    /// files, the pid file and the error log stay in its folder.
    pub fn nginx(http_block: &str, port: u16) -> Proxy {
        let program = binary("nginx", "nginx");
        let config = format!(
            "daemon off;\nmaster_process off;\npid {{dir}}/nginx.pid;\nerror_log {{dir}}/error.log info;\n\
             events {{}}\nhttp {{\n    access_log off;\n    client_body_temp_path {{dir}}/body;\n    \
             proxy_temp_path {{dir}}/proxy;\n    fastcgi_temp_path {{dir}}/fastcgi;\n    uwsgi_temp_path {{dir}}/uwsgi;\n    \
             scgi_temp_path {{dir}}/scgi;\n{http_block}\n}}\n"
        );
        Self::start(
            "nginx",
            &program,
            &["-p", "{dir}", "-e", "{dir}/error.log", "-c", "{dir}/nginx.conf"],
            "nginx.conf",
            &config,
            port,
        )
    }

    /// HAProxy in the foreground with `config`.
    pub fn haproxy(config: &str, port: u16) -> Proxy {
        let program = binary("haproxy", "haproxy");
        Self::start("haproxy", &program, &["-db", "-f", "{dir}/haproxy.cfg"], "haproxy.cfg", config, port)
    }

    /// Caddy with the Caddyfile `config`.
    pub fn caddy(config: &str, port: u16) -> Proxy {
        let program = binary("caddy", "caddy");
        Self::start(
            "caddy",
            &program,
            &["run", "--config", "{dir}/Caddyfile", "--adapter", "caddyfile"],
            "Caddyfile",
            config,
            port,
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Established TCP connections whose local end is `port` on this machine (from /proc/net/tcp): the
/// connections a server on that port has accepted and not yet closed.
pub fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "01"
        })
        .count()
}
