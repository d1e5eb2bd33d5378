//! TLS to the MySQL/MariaDB server: `CDC_MYSQL_SSL_MODE`,
//! `CDC_MYSQL_SSL_CA` and the client certificate as mysql_async's `SslOpts`, and which connection
//! errors are TLS's (retrying cannot fix those).

use mysql_async::{ClientIdentity, DriverError, IoError, Opts, OptsBuilder, SslOpts};

use crate::config::{MysqlSslMode, MysqlTls};

/// Plaintext, for `preferred` against a server without TLS.
pub const PLAINTEXT: MysqlTls = MysqlTls {
    mode: MysqlSslMode::Disabled,
    ca_file: None,
    identity: None,
};

/// `opts` (parsed from the URL) with the TLS settings of `tls`, which
/// replace any the URL's parameters made (the config already folded those
/// into `tls.mode`).
pub fn with_tls(opts: Opts, tls: &MysqlTls) -> Opts {
    // mysql_async does not export its path-or-bytes type: built in place.
    let roots = || tls.ca_file.iter().cloned().map(Into::into).collect();
    let ssl = match tls.mode {
        MysqlSslMode::Disabled => None,
        // Encryption against eavesdroppers only: like the mysql client's
        // PREFERRED and REQUIRED, any certificate is taken.
        MysqlSslMode::Preferred | MysqlSslMode::Required => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        MysqlSslMode::VerifyCa => Some(
            SslOpts::default()
                .with_root_certs(roots())
                .with_danger_skip_domain_validation(true),
        ),
        MysqlSslMode::VerifyIdentity => Some(SslOpts::default().with_root_certs(roots())),
    };
    let ssl = ssl.map(|ssl| match &tls.identity {
        Some(id) => ssl.with_client_identity(Some(ClientIdentity::new(id.pkcs12.to_vec().into()))),
        None => ssl,
    });
    OptsBuilder::from_opts(opts).ssl_opts(ssl).into()
}

/// Connects with `opts` (already `with_tls`) within `timeout`; in
/// `preferred` mode, once more in plaintext when the server offers no TLS,
/// then also returning true. Shared by the source and `doctor`.
pub async fn connect(
    opts: &Opts,
    mode: MysqlSslMode,
    timeout: std::time::Duration,
) -> (
    Result<Result<mysql_async::Conn, mysql_async::Error>, tokio::time::error::Elapsed>,
    bool,
) {
    let result = tokio::time::timeout(timeout, mysql_async::Conn::new(opts.clone())).await;
    if mode == MysqlSslMode::Preferred && matches!(result, Ok(Err(ref e)) if server_lacks_tls(e)) {
        let plain = with_tls(opts.clone(), &PLAINTEXT);
        return (
            tokio::time::timeout(timeout, mysql_async::Conn::new(plain)).await,
            true,
        );
    }
    (result, false)
}

/// True when the server did not offer TLS at all.
pub fn server_lacks_tls(e: &mysql_async::Error) -> bool {
    matches!(
        e,
        mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer)
    )
}

/// True for a failure of TLS itself (no TLS on the server, an untrusted
/// or misnamed certificate, an unreadable CA), not of the network under it.
pub fn is_tls_failure(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(IoError::Tls(tls)) => {
            // A connection reset mid-handshake surfaces as a TLS error with
            // an I/O error under it: that one is worth a retry.
            let mut source = std::error::Error::source(tls);
            while let Some(s) = source {
                if s.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() != std::io::ErrorKind::Other)
                {
                    return false;
                }
                source = s.source();
            }
            true
        }
        _ => server_lacks_tls(e),
    }
}

/// What to change after a TLS failure in `mode`.
pub fn failure_hint(mode: MysqlSslMode) -> &'static str {
    match mode {
        MysqlSslMode::VerifyCa | MysqlSslMode::VerifyIdentity => {
            "set CDC_MYSQL_SSL_CA to the CA that signed the server's certificate, \
             check that the certificate names the host in CDC_MYSQL_URL (or use verify_ca), \
             or enable TLS on the server"
        }
        _ => "enable TLS on the server (ssl_cert, ssl_key), or set CDC_MYSQL_SSL_MODE=disabled",
    }
}

/// Added to an access-denied message: a user created `REQUIRE SSL` is
/// refused over plaintext with the same error as a wrong password.
pub fn denied_hint(mode: MysqlSslMode) -> &'static str {
    match mode {
        MysqlSslMode::Disabled | MysqlSslMode::Preferred => {
            "; a user created REQUIRE SSL is refused without TLS: \
             set CDC_MYSQL_SSL_MODE=verify_identity and CDC_MYSQL_SSL_CA"
        }
        _ => "",
    }
}

/// True for `localhost` and loopback addresses: plaintext there crosses no network.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
