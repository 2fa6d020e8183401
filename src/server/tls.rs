//! HTTPS: `--tls-cert` / `--tls-key`, with HTTP/2 and HTTP/1.1 offered by ALPN.
//!
//! rustls with the ring provider. The certificate is served through a resolver that holds the current
//! one, so that SIGHUP can load new files (a renewed certificate) for the connections accepted from then
//! on while the open ones, and their streams, go on with the old one. A reload that fails (a file half
//! written, a key that does not match) is logged and the current certificate kept.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The ALPN protocol id of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol id of HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf.
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Reads both files into a certificate ready to serve, checking that the key matches it.
    ///
    /// # Errors
    /// A message naming the flag and the file: unreadable, no PEM certificate or key in it, a key of a
    /// kind rustls cannot sign with, or a key that is not the certificate's.
    pub fn load(&self) -> Result<CertifiedKey, String> {
        let cert_flag = format!("--tls-cert {}", self.cert.display());
        let key_flag = format!("--tls-key {}", self.key.display());
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| format!("{cert_flag}: cannot read: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{cert_flag}: not PEM: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{cert_flag}: no PEM certificate (BEGIN CERTIFICATE) in it"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                format!("{key_flag}: no PEM private key (BEGIN PRIVATE KEY, RSA or EC PRIVATE KEY) in it")
            }
            e => format!("{key_flag}: cannot read a private key: {e}"),
        })?;
        let certified = CertifiedKey::from_der(certs, key, &provider())
            .map_err(|e| format!("{key_flag} does not go with {cert_flag}: {e}"))?;
        Ok(certified)
    }
}

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole certificate: the swap below cannot panic half-way.
        Some(self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// The TLS side of the listener: the acceptor, and what SIGHUP reloads.
#[derive(Clone)]
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    files: TlsFiles,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// The acceptor for `files` (loaded now), offering `h2` then `http/1.1`.
    ///
    /// # Errors
    /// As [`TlsFiles::load`]; or rustls refuses its own default protocol versions (it does not).
    pub(crate) fn new(files: TlsFiles) -> Result<Self, String> {
        let current = Arc::new(Current(RwLock::new(Arc::new(files.load()?))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), current, files })
    }

    /// The acceptor.
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads the files again and serves the new certificate to the connections accepted from now on.
    /// On failure the current one stays.
    pub(crate) fn reload(&self) {
        match self.files.load() {
            Ok(certified) => {
                *self.current.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!("TLS certificate not reloaded, serving the previous one: {e}"),
        }
    }

    /// Reloads on every SIGHUP, for as long as the process runs. Without a handler (it cannot be
    /// installed), SIGHUP keeps its default action.
    pub(crate) fn reload_on_sighup(&self) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install a SIGHUP handler: the certificate will not be reloaded");
            return;
        };
        let tls = self.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tls.reload();
            }
        });
    }
}
