//! The consumer rides out a broker restart: it keeps running, reconnects and
//! stores what is produced after the restart, nothing lost or doubled.

use std::time::Duration;

use crate::harness::canal::message;
use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::es::EsTarget;
use crate::harness::eventually;
use crate::harness::kafka::PrivateBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reconnects_after_a_broker_restart_and_loses_nothing() {
    if std::env::var_os("CDC_TEST_KAFKA_BROKERS").is_some() {
        // An external cluster cannot be restarted from here.
        return;
    }
    let mut broker = PrivateBroker::start();
    let client = broker.client();
    let es = EsTarget::start().await;
    let p = Pipeline::new("restart", &broker.bootstrap, &es.url, 1);
    client.create_topic(&p.topic, 1).await;
    client.create_topic(&p.dlq, 1).await;
    client.produce(&p.topic, 1, (0..1_000).map(message)).await;
    let mut consumer = ConsumerProcess::spawn(&p.env());
    let first = eventually(Duration::from_secs(60), || async {
        es.count(&p.index).await == 1_000
    })
    .await;
    assert!(first, "{}", consumer.log_tail());

    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.resume();
    client
        .produce(&p.topic, 1, (1_000..2_000).map(message))
        .await;

    let all = eventually(Duration::from_secs(90), || async {
        es.count(&p.index).await == 2_000
    })
    .await;
    assert!(
        all,
        "{} of 2000; log:\n{}",
        es.count(&p.index).await,
        consumer.log_tail()
    );
    let committed = eventually(Duration::from_secs(30), || async {
        client.committed(&p.group, &p.topic, 1) == [2_000]
    })
    .await;
    assert!(
        committed,
        "committed {:?}",
        client.committed(&p.group, &p.topic, 1)
    );
    let status = consumer.terminate(Duration::from_secs(35));
    assert!(status.success());
}
