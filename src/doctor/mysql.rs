//! The MySQL/MariaDB hops: the binlog source's preflight, and the canary
//! row written at the source and timed to the running instance.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::instance::at_path;
use super::{broken, secs, Broken, Canary};
use crate::clock::now_millis;
use crate::config::{MysqlConfig, MysqlTls};
use crate::source::binlog::preflight;
use crate::source::binlog::tls::{self, with_tls};

/// The binlog source's own preflight: binary log on, row format, full
/// images, the privileges a replica needs.
pub(super) async fn binlog(cfg: &MysqlConfig, timeout: Duration) -> Result<String, Broken> {
    let (mut conn, at) = mysql_connect(&cfg.url, &cfg.tls, timeout).await?;
    let checked = preflight::check(&mut conn, &cfg.tables).await;
    let _ = conn.disconnect().await;
    let (info, problems) =
        checked.map_err(|e| broken(format!("mysql {at}: {e}"), "check the server's log"))?;
    if !problems.is_empty() {
        let whats: Vec<&str> = problems.iter().map(|p| p.what.as_str()).collect();
        let fixes: Vec<&str> = problems.iter().map(|p| p.fix.as_str()).collect();
        return Err(broken(
            format!("binlog {at} ({}): {}", info.version, whats.join("; ")),
            fixes.join("; then "),
        ));
    }
    Ok(format!(
        "binlog {at}: {}, binary log on in row format with full images, the user may replicate",
        info.version
    ))
}

/// Connects as `url` says, with `tls` (plaintext fallback in `preferred`).
async fn mysql_connect(
    url: &SecretString,
    tls: &MysqlTls,
    timeout: Duration,
) -> Result<(mysql_async::Conn, String), Broken> {
    let opts = mysql_async::Opts::from_url(url.expose_secret()).map_err(|e| {
        broken(
            format!("CDC_MYSQL_URL does not parse: {e}"),
            "set CDC_MYSQL_URL to mysql://USER:PASSWORD@HOST:PORT",
        )
    })?;
    let at = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    let user = opts.user().unwrap_or_default().to_owned();
    let (connected, _) = tls::connect(&with_tls(opts, tls), tls.mode, timeout).await;
    match connected {
        Ok(Ok(conn)) => Ok((conn, at)),
        Ok(Err(mysql_async::Error::Server(e))) if e.code == 1045 || e.code == 1044 => Err(broken(
            format!("mysql {at} refuses user {user}: {}", e.message),
            "correct the user and password in CDC_MYSQL_URL",
        )),
        Ok(Err(e)) if tls::is_tls_failure(&e) => Err(broken(
            format!("TLS to mysql {at} fails: {e}"),
            tls::failure_hint(tls.mode),
        )),
        Ok(Err(e)) => Err(broken(
            format!("cannot connect to mysql {at}: {e}"),
            "check that the server runs and CDC_MYSQL_URL names its host and port",
        )),
        Err(_) => Err(broken(
            format!("mysql {at} does not answer within {}", secs(timeout)),
            "check CDC_MYSQL_URL's host and port and any firewall between",
        )),
    }
}

/// Writes the canary row (one row, its marker replaced each run) and waits
/// until the instance at `url` serves that change.
pub(super) async fn canary(
    c: &Canary,
    url: &Url,
    token: Option<&SecretString>,
    timeout: Duration,
) -> Result<String, Broken> {
    let (db, table) = (&c.database, &c.table);
    let (mut conn, at) = mysql_connect(&c.mysql_url, &c.tls, timeout).await?;
    // Not named like a masked column (`*token*`, `*secret*`...): the
    // marker must arrive as written to be recognised.
    let marker = format!("doctor{}", now_millis());
    let written = async {
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
            .await?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`{table}` (id INT PRIMARY KEY, marker VARCHAR(64) NOT NULL)"
        ))
        .await?;
        conn.exec_drop(
            format!("INSERT INTO `{db}`.`{table}` (id, marker) VALUES (1, ?) ON DUPLICATE KEY UPDATE marker = VALUES(marker)"),
            (marker.clone(),),
        )
        .await
    }
    .await;
    let _ = conn.disconnect().await;
    written.map_err(|e| {
        broken(
            format!("cannot write the canary row into {db}.{table} at mysql {at}: {e}"),
            format!("GRANT CREATE, INSERT, UPDATE ON `{db}`.* TO the CDC_MYSQL_URL user, or set CDC_DOCTOR_CANARY_TABLE to a table it may write"),
        )
    })?;
    let sent = tokio::time::Instant::now();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| broken(format!("http client: {e}"), "report this bug"))?;
    let mut events = at_path(url, "api/events");
    events
        .query_pairs_mut()
        .append_pair("database", db)
        .append_pair("table", table)
        .append_pair("limit", "5");
    loop {
        let mut request = client.get(events.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token.expose_secret());
        }
        match request.send().await {
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                return Err(broken(
                    format!(
                        "{url}api/events refuses doctor's token (HTTP {})",
                        r.status()
                    ),
                    "set CDC_HTTP_TOKEN to the instance's token",
                ))
            }
            Ok(r) => {
                if r.text().await.is_ok_and(|body| body.contains(&marker)) {
                    return Ok(format!(
                        "row written into {db}.{table} arrived at {url} in {:.1}s",
                        sent.elapsed().as_secs_f64()
                    ));
                }
            }
            Err(_) => {}
        }
        if sent.elapsed() >= c.timeout {
            return Err(broken(
                format!(
                    "the row written into {db}.{table} did not arrive at {url} within {}",
                    secs(c.timeout)
                ),
                "check that the table is captured (CDC_TABLES, or the changefeed's filter rules), then the hops above and the instance's log",
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
