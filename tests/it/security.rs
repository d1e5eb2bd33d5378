//! Secure by default, with the real binary over real HTTP: the token guards
//! the dashboard, `/api` and `/metrics`; a foreign Host is refused; a
//! non-loopback address without a token does not start; no config error or
//! log line shows a secret; a flood of slow clients does not stop ingestion.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::consumer::{strip_ansi, Consumer, ConsumerProcess};
use crate::harness::eventually;
use crate::harness::mariadb::MariaDb;
use crate::harness::ports::ClosedPort;
use crate::harness::prometheus::Prometheus;
use crate::harness::unique;
use crate::store::stored;

/// A MariaDB with one captured table `{d}.t`, and the capture environment
/// into the embedded store in `dir`.
async fn captured_table(
    prefix: &str,
    dir: &std::path::Path,
) -> (MariaDb, String, Vec<(String, String)>) {
    let db = MariaDb::start().await;
    let d = db.create_database(prefix).await;
    db.exec(&format!(
        "CREATE TABLE {d}.t (id INT PRIMARY KEY, v VARCHAR(100))"
    ))
    .await;
    let env = db.capture_env(&format!("{d}.t"), dir);
    (db, d, env)
}

/// GET `path` with an optional `Authorization` value: status, headers, body.
async fn get(
    p: &ConsumerProcess,
    path: &str,
    auth: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", p.http()));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

/// One raw HTTP/1.1 request with the given Host header; the status code.
async fn status_with_host(p: &ConsumerProcess, path: &str, host: &str) -> u16 {
    let mut s = TcpStream::connect(p.http()).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_api_and_metrics_need_the_token_which_never_shows_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (db, d, mut env) = captured_table("auth", dir.path()).await;
    let token = unique("tok-web");
    let scrape = unique("tok-scrape");
    let token_file = dir.path().join("http-token");
    // From a file, with the newline editors add.
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    env.push((
        "CDC_HTTP_TOKEN_FILE".into(),
        token_file.display().to_string(),
    ));
    env.push(("CDC_METRICS_TOKEN".into(), scrape.clone()));
    env.push(("CDC_LOG_LEVEL".into(), "debug".into()));
    let mut p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    db.exec(&format!("INSERT INTO {d}.t VALUES (1, 'guarded-row')"))
        .await;

    let bearer = format!("Bearer {token}");
    let found = eventually(Duration::from_secs(30), || async {
        let (status, _, body) = get(&p, "/api/events?q=guarded-row", Some(&bearer)).await;
        status == 200 && body.contains("guarded-row")
    })
    .await;
    assert!(found, "{}", p.log_tail());

    // Without the token: 401 everywhere but the probes, with a challenge a
    // browser answers with a login prompt.
    for path in [
        "/api/events",
        "/api/stats",
        "/api/checkpoint",
        "/",
        "/assets/app.js",
    ] {
        let (status, headers, body) = get(&p, path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic"), "{path}: {challenge}");
        assert!(!body.contains("guarded-row"));
        assert_eq!(get(&p, path, Some("Bearer wrong")).await.0, 401, "{path}");
    }
    assert_eq!(get(&p, "/metrics", None).await.0, 401);
    assert_eq!(get(&p, "/healthz", None).await.0, 200);
    assert_eq!(get(&p, "/readyz", None).await.0, 200);

    // The right token, as Bearer or as the password of basic auth.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("me:{token}"))
    );
    assert_eq!(get(&p, "/", Some(&basic)).await.0, 200);
    assert_eq!(get(&p, "/api/stats", Some(&bearer)).await.0, 200);
    // The binlog source has no TiDB checkpoint.
    let (status, _, body) = get(&p, "/api/checkpoint", Some(&bearer)).await;
    assert_eq!((status, body.trim()), (200, r#"{"tso":null}"#));
    // /metrics takes either token; the scrape token opens nothing else.
    let (status, _, body) = get(&p, "/metrics", Some(&format!("Bearer {scrape}"))).await;
    assert_eq!(status, 200);
    assert!(body.contains("cdc_events_total"), "{body}");
    assert_eq!(get(&p, "/metrics", Some(&bearer)).await.0, 200);
    assert_eq!(
        get(&p, "/api/events", Some(&format!("Bearer {scrape}")))
            .await
            .0,
        401
    );

    assert!(p.terminate(Duration::from_secs(30)).success());
    let log = strip_ansi(&std::fs::read_to_string(&p.log).unwrap());
    assert!(log.contains("token_required=true"), "{log}");
    assert!(!log.contains(&token) && !log.contains(&scrape), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_with_the_metrics_token_from_a_file_and_not_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (db, d, mut env) = captured_table("scrape", dir.path()).await;
    let scrape = unique("tok-scrape");
    env.push(("CDC_HTTP_TOKEN".into(), unique("tok-web")));
    env.push(("CDC_METRICS_TOKEN".into(), scrape.clone()));
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    db.exec(&format!("INSERT INTO {d}.t VALUES (1, 'scraped')"))
        .await;
    let right = dir.path().join("right-token");
    std::fs::write(&right, format!("{scrape}\n")).unwrap();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let target = p.http().to_string();
    let Some(with) = Prometheus::start_scraping(&target, Some(&right)) else {
        panic!("prometheus is not installed (apt-get install prometheus)");
    };
    let without = Prometheus::start_scraping(&target, Some(&wrong)).unwrap();
    let counted = eventually(Duration::from_secs(30), || async {
        with.query_sum(&format!(
            "cdc_events_total{{database=\"{d}\",op=\"insert\"}}"
        ))
        .await
            == Some(1.0)
    })
    .await;
    assert!(counted, "{}", p.log_tail());
    assert_eq!(with.query_sum("up").await, Some(1.0));
    let refused = eventually(Duration::from_secs(15), || async {
        without.query_sum("up").await == Some(0.0)
    })
    .await;
    assert!(refused, "a wrong token was accepted");
    assert_eq!(without.query_sum("cdc_events_total").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_header_is_refused_but_probes_answer_any() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, _d, env) = captured_table("host", dir.path()).await;
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    let port = p.http().port();
    // DNS rebinding: the attacker's name, resolved to 127.0.0.1.
    for path in ["/api/events", "/", "/metrics"] {
        assert_eq!(
            status_with_host(&p, path, &format!("rebind.example:{port}")).await,
            421,
            "{path}"
        );
        assert_eq!(
            status_with_host(&p, path, "localhost.evil.example").await,
            421
        );
    }
    assert_eq!(
        status_with_host(&p, "/api/events", &format!("localhost:{port}")).await,
        200
    );
    assert_eq!(
        status_with_host(&p, "/", &format!("127.0.0.1:{port}")).await,
        200
    );
    assert_eq!(
        status_with_host(&p, "/api/stats", &format!("[::1]:{port}")).await,
        200
    );
    assert_eq!(
        status_with_host(&p, "/healthz", "rebind.example").await,
        200
    );
}

/// `cdc-monitor run` with `env` only (no other CDC_* variable), waiting at
/// most `wait` for it to exit by itself; killed after that.
fn run_briefly(env: &[(&str, &str)], wait: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
    cmd.arg("run");
    for (k, _) in std::env::vars() {
        if k.starts_with("CDC_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + wait;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("err.log")).unwrap_or_default();
    (code, out)
}

#[test]
fn a_non_loopback_address_needs_a_token_or_auth_turned_off_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let broker = format!("127.0.0.1:{}", ClosedPort::new().port);
    let base = [
        ("CDC_SINK", "sqlite"),
        ("CDC_DATA_DIR", data.as_str()),
        ("CDC_KAFKA_BROKERS", broker.as_str()),
        ("CDC_HTTP_ADDR", "0.0.0.0:0"),
    ];
    let (code, out) = run_briefly(&base, Duration::from_secs(20));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("CDC_HTTP_ADDR") && out.contains("CDC_HTTP_TOKEN"),
        "{out}"
    );
    assert!(!out.contains("serving /metrics"), "{out}");

    // Turned off by name: it serves, and says so.
    let mut none = base.to_vec();
    none.push(("CDC_HTTP_AUTH", "none"));
    let (code, out) = run_briefly(&none, Duration::from_secs(5));
    assert_eq!(code, None, "it should still be running: {out}");
    assert!(out.contains("CDC_HTTP_AUTH=none"), "{out}");

    // With a token it serves, requiring it.
    let mut with_token = base.to_vec();
    with_token.push(("CDC_HTTP_TOKEN", "a-token"));
    let (code, out) = run_briefly(&with_token, Duration::from_secs(5));
    assert_eq!(code, None, "it should still be running: {out}");
    assert!(out.contains("token_required=true"), "{out}");

    // An empty token file is an error, not "no token".
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.display().to_string();
    let mut empty_file = base.to_vec();
    empty_file.push(("CDC_HTTP_TOKEN_FILE", empty.as_str()));
    let (code, out) = run_briefly(&empty_file, Duration::from_secs(20));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("CDC_HTTP_TOKEN_FILE") && out.contains("empty"),
        "{out}"
    );
}

/// Runs `cdc-monitor ARGS` with `env`, at most `wait`; stdout and stderr.
fn output_of(args: &[&str], env: &[(&str, &str)], wait: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CDC_") {
            cmd.env_remove(k);
        }
    }
    let data = tempfile::tempdir().unwrap();
    cmd.args(args)
        .env("CDC_DATA_DIR", data.path())
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env("CDC_LOG_LEVEL", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    // A path that retries forever is stopped after `wait`: what it logged
    // until then is what is checked.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(wait);
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    drop(killer);
    out
}

/// Arguments and environment of one run.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);

#[test]
fn no_config_error_or_connection_failure_shows_a_secret() {
    const CANARY: &str = "Canary-S3cret-q7Zx";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let closed = ClosedPort::new().port;
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let url_file = file(
        "mysql-url",
        &format!("mariadb://cdc:{CANARY}@127.0.0.1:3306\n"),
    );
    let pw_file = file("es-password", &format!("{CANARY}\n"));
    let mysql_closed = format!("mysql://cdc:{CANARY}@127.0.0.1:{closed}");
    let es_closed = format!("http://elastic:{CANARY}@127.0.0.1:{closed}");
    let ticdc_closed = format!("http://admin:{CANARY}@127.0.0.1:{closed}");
    let props = format!("sasl.password={CANARY},{CANARY}");
    let bad_es = format!("htp://elastic:{CANARY}@127.0.0.1 :9200");
    let bad_port = format!("mysql://cdc:{CANARY}@127.0.0.1:notaport");
    let cases: Vec<Case> = vec![
        (
            vec!["run"],
            vec![("CDC_SOURCE", "binlog"), ("CDC_MYSQL_URL_FILE", &url_file)],
        ),
        (
            vec!["run"],
            vec![("CDC_SOURCE", "binlog"), ("CDC_MYSQL_URL", &bad_port)],
        ),
        (vec!["run"], vec![("CDC_KAFKA_PROPERTIES", &props)]),
        (vec!["run"], vec![("CDC_ES_URL", &bad_es)]),
        (
            vec!["run"],
            vec![("CDC_ES_URL", &es_closed), ("CDC_ES_USERNAME", "other")],
        ),
        (vec!["run"], vec![("CDC_KAFKA_PROPERTIES", CANARY)]),
        (
            vec!["run"],
            vec![
                ("CDC_ES_URL", "http://127.0.0.1:9200"),
                ("CDC_ES_PASSWORD", CANARY),
            ],
        ),
        (
            vec!["run"],
            vec![
                ("CDC_ES_URL", "http://127.0.0.1:9200"),
                ("CDC_ES_PASSWORD_FILE", &pw_file),
            ],
        ),
        (
            vec!["run"],
            vec![
                ("CDC_ES_PASSWORD_FILE", &pw_file),
                ("CDC_ES_PASSWORD", CANARY),
            ],
        ),
        (
            vec!["run"],
            vec![("CDC_HTTP_TOKEN", CANARY), ("CDC_HTTP_ADDR", "nowhere")],
        ),
        (
            vec!["run", "--es-api-key", CANARY, "--es-timeout", "x"],
            vec![],
        ),
        // Failures at run time: the server is not there.
        (
            vec!["run"],
            vec![
                ("CDC_SOURCE", "binlog"),
                ("CDC_MYSQL_URL", &mysql_closed),
                ("CDC_DATA_DIR", &data),
            ],
        ),
        (
            vec!["run"],
            vec![
                ("CDC_SOURCE", "binlog"),
                ("CDC_MYSQL_URL", &mysql_closed),
                ("CDC_ES_URL", &es_closed),
                ("CDC_DATA_DIR", &data),
            ],
        ),
        (
            vec!["changefeed", "ensure", "--ticdc-url", &ticdc_closed],
            vec![],
        ),
    ];
    for (args, env) in &cases {
        let out = output_of(args, env, Duration::from_secs(4));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.is_empty(), "{args:?} {env:?} printed nothing");
        assert!(
            !text.contains(CANARY),
            "{args:?} {env:?} showed the secret:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slow_clients_stop_neither_ingestion_nor_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (db, d, env) = captured_table("slow", dir.path()).await;
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    let total = || stored(dir.path()).values().sum::<usize>();

    // 200 connections that send a header line a byte at a time and never
    // finish it.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(p.http()).await.unwrap();
        s.write_all(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let drip = tokio::spawn(async move {
        for _ in 0..8 {
            for s in slow.iter_mut() {
                let _ = s.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        slow
    });

    // Changes made while they hold their connections are stored.
    let before = total();
    for i in 0..200 {
        db.exec(&format!("INSERT INTO {d}.t VALUES ({i}, 'during-{i}')"))
            .await;
    }
    let stored_during = eventually(Duration::from_secs(30), || async {
        total() >= before + 200
    })
    .await;
    assert!(stored_during, "stored {} of {}", total(), before + 200);
    // The server is answering others meanwhile.
    let (status, _, _) = get(&p, "/api/stats", None).await;
    assert_eq!(status, 200);

    // Cut them; the API answers quickly again.
    drop(drip.await.unwrap());
    let mut took = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let (status, _, _) = get(&p, "/api/events?limit=50", None).await;
        assert_eq!(status, 200);
        took.push(t.elapsed());
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100 - 1];
    println!(
        "/api/events after 200 slow clients: p50 {:?}, p99 {:?}",
        took[took.len() / 2],
        p99
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");

    // A client still dripping its headers is cut at the header deadline
    // (10 s), however steadily it sends.
    let mut s = TcpStream::connect(p.http()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let cut = loop {
        if s.write_all(b"a").await.is_err() {
            break true;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            // Closed, or answered (408) and closed.
            Ok(Ok(_)) | Ok(Err(_)) => break true,
            Err(_) if started.elapsed() > Duration::from_secs(20) => break false,
            Err(_) => {}
        }
    };
    assert!(cut, "a slow client was still connected after 20 s");
    println!("slow client cut after {:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}
