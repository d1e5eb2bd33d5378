//! `changefeed ensure` against the TiCDC open-API stub, through the built
//! binary: exit status and stderr are what the compose job and its operator see.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::process::Command;
use url::Url;

use crate::harness::ports::ClosedPort;
use crate::harness::ticdc::{Changefeed, Refusal, TicdcOptions, TicdcStub};

const SINK_URI: &str = "kafka://127.0.0.1:9092/tidb-cdc?protocol=canal-json&enable-tidb-extension=true&partition-num=3";

struct Run {
    status: ExitStatus,
    stderr: String,
    elapsed: Duration,
}

/// Runs `cdc-monitor changefeed ensure --ticdc-url URL ARGS...` to the end.
async fn ensure(ticdc_url: &Url, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
    cmd.args(["changefeed", "ensure", "--ticdc-url", ticdc_url.as_str()])
        .args(args)
        // No CDC_* setting of the developer's shell, and no HTTP proxy
        // between the binary and the loopback stub.
        .env_clear()
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("changefeed ensure finished within 60 s")
        .expect("changefeed ensure started");
    Run {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

#[tokio::test]
async fn creates_the_changefeed_when_absent() {
    let ticdc = TicdcStub::start(TicdcOptions::default()).await;

    let run = ensure(
        &ticdc.url,
        &[
            "--changefeed-id",
            "cf-test",
            "--sink-uri",
            SINK_URI,
            "--rules",
            "appdb.*,otherdb.orders",
            "--timeout",
            "5",
        ],
    )
    .await;

    assert!(run.status.success(), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("changefeed created"), "{}", run.stderr);
    let creates = ticdc.create_requests();
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0]["changefeed_id"], "cf-test");
    assert_eq!(creates[0]["sink_uri"], SINK_URI);
    assert_eq!(
        creates[0]["replica_config"]["filter"]["rules"],
        serde_json::json!(["appdb.*", "otherdb.orders"])
    );
    assert_eq!(ticdc.changefeed("cf-test").unwrap().state, "normal");
}

#[tokio::test]
async fn leaves_a_normal_changefeed_alone() {
    let ticdc = TicdcStub::start(TicdcOptions {
        changefeeds: vec![Changefeed::normal("cf-kafka")],
        ..TicdcOptions::default()
    })
    .await;

    let run = ensure(&ticdc.url, &["--timeout", "5"]).await;

    assert!(run.status.success(), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("changefeed already running"),
        "{}",
        run.stderr
    );
    assert!(ticdc.create_requests().is_empty());
}

#[tokio::test]
async fn waits_until_ticdc_reports_healthy() {
    let ticdc = TicdcStub::start(TicdcOptions {
        unhealthy_polls: 3,
        ..TicdcOptions::default()
    })
    .await;

    let run = ensure(&ticdc.url, &["--timeout", "20"]).await;

    assert!(run.status.success(), "stderr:\n{}", run.stderr);
    assert_eq!(ticdc.health_polls(), 4);
    assert_eq!(ticdc.create_requests().len(), 1);
}

#[tokio::test]
async fn failed_changefeed_exits_non_zero_with_ticdcs_error() {
    let ticdc = TicdcStub::start(TicdcOptions {
        changefeeds: vec![Changefeed::failed(
            "cf-kafka",
            "CDC:ErrKafkaNewProducer",
            "new kafka producer: kafka: client has run out of available brokers",
        )],
        ..TicdcOptions::default()
    })
    .await;

    let run = ensure(&ticdc.url, &["--timeout", "5"]).await;

    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("state \"failed\""), "{}", run.stderr);
    assert!(
        run.stderr.contains("CDC:ErrKafkaNewProducer"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("client has run out of available brokers"),
        "{}",
        run.stderr
    );
    assert!(ticdc.create_requests().is_empty());
}

#[tokio::test]
async fn unreachable_ticdc_fails_once_the_timeout_passes() {
    // Nothing listens there for as long as `closed` lives.
    let closed = ClosedPort::new();
    let url = Url::parse(&closed.url()).unwrap();

    let run = ensure(&url, &["--timeout", "2"]).await;

    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("not healthy within 2s"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(url.as_str()), "{}", run.stderr);
    assert!(
        run.elapsed >= Duration::from_millis(1900) && run.elapsed < Duration::from_secs(5),
        "took {:?}",
        run.elapsed
    );
}

#[tokio::test]
async fn never_healthy_ticdc_fails_with_its_last_error() {
    let ticdc = TicdcStub::start(TicdcOptions {
        never_healthy: true,
        ..TicdcOptions::default()
    })
    .await;

    let run = ensure(&ticdc.url, &["--timeout", "2"]).await;

    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("not healthy within 2s"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("CDC:ErrClusterIsUnhealthy"),
        "{}",
        run.stderr
    );
    // Polled, not slept: several attempts inside the two seconds.
    assert!(ticdc.health_polls() >= 3, "{}", ticdc.health_polls());
    assert!(ticdc.create_requests().is_empty());
}

#[tokio::test]
async fn refused_create_exits_non_zero_with_ticdcs_message() {
    let ticdc = TicdcStub::start(TicdcOptions {
        refuse_create: Some(Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "CDC:ErrSinkURIInvalid".into(),
            message: "invalid sink uri".into(),
        }),
        ..TicdcOptions::default()
    })
    .await;

    let run = ensure(
        &ticdc.url,
        &["--sink-uri", "kafka://nowhere/", "--timeout", "5"],
    )
    .await;

    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("invalid sink uri"), "{}", run.stderr);
    assert!(
        run.stderr.contains("CDC:ErrSinkURIInvalid"),
        "{}",
        run.stderr
    );
    assert_eq!(ticdc.create_requests().len(), 1);
}

#[tokio::test]
async fn losing_the_create_race_accepts_the_winners_changefeed() {
    let ticdc = TicdcStub::start(TicdcOptions {
        lose_create_race: true,
        ..TicdcOptions::default()
    })
    .await;

    let run = ensure(&ticdc.url, &["--timeout", "5"]).await;

    assert!(run.status.success(), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("changefeed already running"),
        "{}",
        run.stderr
    );
    assert_eq!(ticdc.create_requests().len(), 1);
}

#[tokio::test]
async fn empty_rules_fail_before_contacting_ticdc() {
    let ticdc = TicdcStub::start(TicdcOptions::default()).await;

    let run = ensure(&ticdc.url, &["--rules", "", "--timeout", "5"]).await;

    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("invalid --rules"), "{}", run.stderr);
    assert_eq!(ticdc.health_polls(), 0);
}
