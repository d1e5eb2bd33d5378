//! What the HTTP clients (Elasticsearch, TiCDC) share: PEM files for a CA
//! to trust and a client identity for mutual TLS, read once at start (errors
//! name the option the file came from), and how their errors are told.

use std::path::Path;

/// A PEM file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {reason}")]
pub struct TlsFileError {
    pub key: &'static str,
    pub path: String,
    pub reason: String,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError {
        key,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The CA certificate in `path`, named `key` in errors.
pub fn root_certificate(
    key: &'static str,
    path: &Path,
) -> Result<reqwest::Certificate, TlsFileError> {
    let pem = read(key, path)?;
    reqwest::Certificate::from_pem(&pem).map_err(|e| TlsFileError {
        key,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The client identity of a PEM certificate (chain) and its PKCS#8 key;
/// `keys` names the two options in errors.
pub fn client_identity(
    keys: [&'static str; 2],
    cert: &Path,
    key: &Path,
) -> Result<reqwest::Identity, TlsFileError> {
    let cert_pem = read(keys[0], cert)?;
    let key_pem = read(keys[1], key)?;
    if !String::from_utf8_lossy(&key_pem).contains("-----BEGIN PRIVATE KEY-----") {
        return Err(TlsFileError {
            key: keys[1],
            path: key.display().to_string(),
            reason: "expected an unencrypted PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----); \
                     convert with `openssl pkcs8 -topk8 -nocrypt`"
                .into(),
        });
    }
    reqwest::Identity::from_pkcs8_pem(&cert_pem, &key_pem).map_err(|e| TlsFileError {
        key: keys[0],
        path: cert.display().to_string(),
        reason: format!("with {} {}: {e}", keys[1], key.display()),
    })
}

/// `err` and its sources on one line, each cause once: reqwest's top-level
/// message alone ("error sending request") hides the cause, e.g.
/// "Connection refused" or a certificate the server would not accept.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_includes_sources_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("send failed")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(error_chain(&Outer(inner)), "send failed: refused");
    }
}
