//! TLS end to end, with certificates each test makes: binlog capture from a
//! MariaDB user created `REQUIRE SSL`, refusals without TLS or without the
//! CA, and Elasticsearch and Kafka behind a TLS endpoint demanding a client
//! certificate (mutual TLS).

use std::time::Duration;

use crate::harness::consumer::{Consumer, ConsumerProcess};
use crate::harness::es::EsTarget;
use crate::harness::eventually;
use crate::harness::kafka::PrivateBroker;
use crate::harness::mariadb::MariaDb;
use crate::harness::tls::{TestCerts, TlsProxy};
use crate::store::stored;

/// A MariaDB serving TLS with the test's certificate, a database with three
/// rows, and the URL of a capture user created `REQUIRE SSL`.
async fn tls_server(certs: &TestCerts) -> (MariaDb, String, String) {
    let db = MariaDb::start_with_args(certs.mariadb_args()).await;
    let database = db.create_database("tls").await;
    db.exec(&format!(
        "CREATE TABLE {database}.t (id INT PRIMARY KEY, v VARCHAR(20));\
         INSERT INTO {database}.t VALUES (1, 'a'), (2, 'b'), (3, 'c');"
    ))
    .await;
    let url = db
        .user_with("REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.*")
        .await;
    let user = url::Url::parse(&url).unwrap().username().to_owned();
    db.exec(&format!(
        "SET SESSION sql_log_bin = 0; ALTER USER '{user}'@'127.0.0.1' REQUIRE SSL"
    ))
    .await;
    (db, database, url)
}

/// Capture environment for `url` into the store in `dir`, with `extra` on top.
fn env(
    db: &MariaDb,
    database: &str,
    url: &str,
    dir: &std::path::Path,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = db
        .capture_env(&format!("{database}.*"), dir)
        .into_iter()
        .filter(|(k, _)| k != "CDC_MYSQL_URL")
        .collect();
    env.push(("CDC_MYSQL_URL".into(), url.to_owned()));
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn binlog_capture_over_tls_from_a_require_ssl_user() {
    let certs = TestCerts::generate();
    let (db, database, url) = tls_server(&certs).await;
    let dir = tempfile::tempdir().unwrap();
    let p = ConsumerProcess::spawn(&env(
        &db,
        &database,
        &url,
        dir.path(),
        &[("CDC_MYSQL_SSL_CA", certs.ca().display().to_string())],
    ));
    let ok = eventually(Duration::from_secs(60), || async {
        stored(dir.path()).values().sum::<usize>() >= 3
    })
    .await;
    assert!(
        ok,
        "stored {:?}; log:\n{}",
        stored(dir.path()),
        p.log_tail()
    );
    // verify_identity is the default with a CA: no warning about TLS.
    assert!(!p.log_tail().contains("plaintext"), "{}", p.log_tail());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_require_x509_user_captures_only_with_its_client_certificate() {
    let certs = TestCerts::generate();
    let (db, database, _) = tls_server(&certs).await;
    let url = db
        .user_with("REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.*")
        .await;
    let user = url::Url::parse(&url).unwrap().username().to_owned();
    db.exec(&format!(
        "SET SESSION sql_log_bin = 0; ALTER USER '{user}'@'127.0.0.1' REQUIRE X509"
    ))
    .await;
    let ca = ("CDC_MYSQL_SSL_CA", certs.ca().display().to_string());
    // TLS with a verified server, but no client certificate: refused.
    let dir = tempfile::tempdir().unwrap();
    let mut p = ConsumerProcess::spawn(&env(
        &db,
        &database,
        &url,
        dir.path(),
        std::slice::from_ref(&ca),
    ));
    let status = p.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "{}", p.log_tail());
    assert!(p.log_tail().contains("CDC_MYSQL_URL"), "{}", p.log_tail());
    assert_eq!(stored(dir.path()).values().sum::<usize>(), 0);
    // With it, the rows arrive.
    let dir = tempfile::tempdir().unwrap();
    let p = ConsumerProcess::spawn(&env(
        &db,
        &database,
        &url,
        dir.path(),
        &[
            ca,
            (
                "CDC_MYSQL_SSL_CERT",
                certs.client_cert().display().to_string(),
            ),
            (
                "CDC_MYSQL_SSL_KEY",
                certs.client_key().display().to_string(),
            ),
        ],
    ));
    let ok = eventually(Duration::from_secs(60), || async {
        stored(dir.path()).values().sum::<usize>() >= 3
    })
    .await;
    assert!(
        ok,
        "stored {:?}; log:\n{}",
        stored(dir.path()),
        p.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_without_tls_or_without_the_ca_stops_with_what_to_set() {
    let certs = TestCerts::generate();
    let (db, database, url) = tls_server(&certs).await;
    // Plaintext: the REQUIRE SSL user is refused, as with a wrong password.
    let dir = tempfile::tempdir().unwrap();
    let mut p = ConsumerProcess::spawn(&env(
        &db,
        &database,
        &url,
        dir.path(),
        &[("CDC_MYSQL_SSL_MODE", "disabled".to_owned())],
    ));
    let status = p.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "{}", p.log_tail());
    let log = p.log_tail();
    assert!(
        log.contains("CDC_MYSQL_URL") && log.contains("REQUIRE SSL"),
        "{log}"
    );
    // TLS, but the server's certificate is signed by a CA nobody trusts.
    let dir = tempfile::tempdir().unwrap();
    let mut p = ConsumerProcess::spawn(&env(
        &db,
        &database,
        &url,
        dir.path(),
        &[("CDC_MYSQL_SSL_MODE", "verify_identity".to_owned())],
    ));
    let status = p.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "{}", p.log_tail());
    let log = p.log_tail();
    assert!(log.contains("CDC_MYSQL_SSL_CA"), "{log}");
    // mysql_async's own URL parameters work too: TLS, certificate unchecked.
    let dir = tempfile::tempdir().unwrap();
    let p = ConsumerProcess::spawn(&env(
        &db,
        &database,
        &format!("{url}?require_ssl=true&verify_ca=false"),
        dir.path(),
        &[],
    ));
    let ok = eventually(Duration::from_secs(60), || async {
        stored(dir.path()).values().sum::<usize>() >= 3
    })
    .await;
    assert!(ok, "log:\n{}", p.log_tail());
}

#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_behind_mutual_tls_gets_documents_only_with_the_client_certificate() {
    let certs = TestCerts::generate();
    let (db, database, url) = tls_server(&certs).await;
    let es = EsTarget::stub().await;
    let upstream = es.url.trim_start_matches("http://").parse().unwrap();
    let proxy = TlsProxy::start(&certs, upstream, true).await;
    let tls_env = |index: &str, with_cert: bool| {
        let mut extra = vec![
            ("CDC_MYSQL_SSL_CA", certs.ca().display().to_string()),
            ("CDC_ES_URL", proxy.url()),
            ("CDC_ES_INDEX", index.to_owned()),
            ("CDC_ES_CA_FILE", certs.ca().display().to_string()),
            ("CDC_RETRY_MAX_BACKOFF", "1s".to_owned()),
        ];
        if with_cert {
            extra.push((
                "CDC_ES_CLIENT_CERT",
                certs.client_cert().display().to_string(),
            ));
            extra.push((
                "CDC_ES_CLIENT_KEY",
                certs.client_key().display().to_string(),
            ));
        }
        extra
    };

    // Without a client certificate the endpoint refuses every request.
    let dir = tempfile::tempdir().unwrap();
    let p = ConsumerProcess::spawn(&env(
        &db,
        &database,
        &url,
        dir.path(),
        &tls_env("no-cert", false),
    ));
    let refused = eventually(Duration::from_secs(30), || async {
        p.log_tail().contains("cannot install index template yet")
    })
    .await;
    assert!(refused, "log:\n{}", p.log_tail());
    assert_eq!(es.count("no-cert").await, 0);
    drop(p);

    let dir = tempfile::tempdir().unwrap();
    let p = ConsumerProcess::spawn(&env(
        &db,
        &database,
        &url,
        dir.path(),
        &tls_env("mtls", true),
    ));
    let ok = eventually(Duration::from_secs(60), || async {
        es.count("mtls").await >= 3
    })
    .await;
    assert!(ok, "log:\n{}", p.log_tail());
}

#[tokio::test(flavor = "multi_thread")]
async fn changefeed_ensure_reaches_ticdc_behind_mutual_tls_only_with_its_client_certificate() {
    use crate::harness::ticdc::{TicdcOptions, TicdcStub};
    let certs = TestCerts::generate();
    let stub = TicdcStub::start(TicdcOptions {
        basic_auth: Some(("ci".into(), "S3cret".into())),
        ..TicdcOptions::default()
    })
    .await;
    let upstream = stub.url.socket_addrs(|| None).unwrap()[0];
    let proxy = TlsProxy::start(&certs, upstream, true).await;
    let ensure_as = |with_cert: bool, password: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
        cmd.args(["changefeed", "ensure", "--timeout", "3s"])
            .arg("--ticdc-url")
            .arg(format!("https://ci:{password}@{}", proxy.addr))
            .arg("--ticdc-ca-file")
            .arg(certs.ca());
        if with_cert {
            cmd.arg("--ticdc-client-cert")
                .arg(certs.client_cert())
                .arg("--ticdc-client-key")
                .arg(certs.client_key());
        }
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CDC_")) {
            cmd.env_remove(k);
        }
        tokio::process::Command::from(cmd)
    };
    let ensure = |with_cert: bool| ensure_as(with_cert, "S3cret");
    let without = ensure(false).output().await.unwrap();
    // The right certificate, the wrong password: TiCDC's 401.
    let wrong = ensure_as(true, "Wr0ngPass").output().await.unwrap();
    let log = String::from_utf8_lossy(&wrong.stderr).into_owned()
        + &String::from_utf8_lossy(&wrong.stdout);
    assert!(!wrong.status.success(), "{log}");
    assert!(stub.refused_auth() >= 1, "{log}");
    assert!(
        !log.contains("Wr0ngPass"),
        "the password reached the log: {log}"
    );
    assert!(stub.create_requests().is_empty());
    let with = ensure(true).output().await.unwrap();
    let log = String::from_utf8_lossy(&without.stderr).into_owned()
        + &String::from_utf8_lossy(&without.stdout);
    assert!(!without.status.success(), "{log}");
    assert!(log.contains("not healthy"), "{log}");
    assert!(
        !log.contains("S3cret"),
        "the password reached the log: {log}"
    );
    let log =
        String::from_utf8_lossy(&with.stderr).into_owned() + &String::from_utf8_lossy(&with.stdout);
    assert!(with.status.success(), "{log}");
    assert!(
        !log.contains("S3cret"),
        "the password reached the log: {log}"
    );
    assert_eq!(stub.create_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_behind_mutual_tls_is_consumed_only_with_the_client_certificate() {
    const N: usize = 500;
    let certs = TestCerts::generate();
    // The broker must advertise the TLS endpoint, so that every connection
    // librdkafka makes goes through it: bind it first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_port = listener.local_addr().unwrap().port();
    let broker = PrivateBroker::start_advertising(tls_port);
    let upstream = broker.bootstrap.parse().unwrap();
    let _proxy = TlsProxy::start_on(listener, &certs, upstream, true);
    let tls_bootstrap = format!("127.0.0.1:{tls_port}");
    let path = |p: std::path::PathBuf| p.display().to_string();
    let client_tls = [
        ("security.protocol", "ssl".to_owned()),
        ("ssl.ca.location", path(certs.ca())),
        ("ssl.certificate.location", path(certs.client_cert())),
        ("ssl.key.location", path(certs.client_key())),
    ];
    let kafka = broker.client_via(&tls_bootstrap, &client_tls);
    let p = crate::harness::consumer::Pipeline::new("kafka-tls", &tls_bootstrap, "", 1);
    kafka.create_topic(&p.topic, 1).await;
    kafka.create_topic(&p.dlq, 1).await;
    kafka
        .produce(&p.topic, 1, (0..N).map(crate::harness::canal::message))
        .await;

    let run = |with_cert: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut env = p.store_env(dir.path());
        env.push(("CDC_STORE_RETENTION".into(), "36500d".into()));
        env.push(("CDC_KAFKA_SECURITY_PROTOCOL".into(), "ssl".into()));
        env.push(("CDC_KAFKA_SSL_CA_LOCATION".into(), path(certs.ca())));
        if with_cert {
            env.push((
                "CDC_KAFKA_PROPERTIES".into(),
                format!(
                    "ssl.certificate.location={},ssl.key.location={}",
                    path(certs.client_cert()),
                    path(certs.client_key())
                ),
            ));
        }
        (ConsumerProcess::spawn(&env), dir)
    };
    // Without its certificate the handshake is refused: nothing is read.
    let (refused, refused_dir) = run(false);
    refused.wait_healthy().await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let got: usize = stored(refused_dir.path()).values().sum();
    assert_eq!(got, 0, "{}", refused.log_tail());
    drop(refused);

    let (consumer, dir) = run(true);
    let all = eventually(Duration::from_secs(60), || async {
        stored(dir.path()).values().sum::<usize>() >= N
    })
    .await;
    assert!(
        all,
        "stored {:?}; log:\n{}",
        stored(dir.path()),
        consumer.log_tail()
    );
}
