//! `cdc-monitor doctor`: checks each hop of the pipeline `run` would build,
//! in pipeline order (configuration, source, TiCDC, sink, a running
//! instance), and stops at the first broken one with what is wrong and the
//! command or setting that fixes it.
//!
//! One file per hop kind: `kafka`, `mysql` (binlog preflight and the
//! canary), `changefeed`, `elasticsearch`, `store`, `instance`. Every check
//! only reads (metadata, settings, grants, health): nothing is created,
//! joined or written, so doctor can run beside a live instance. The one
//! exception is `--canary`, which writes its one row at the source.

use std::time::Duration;

use secrecy::SecretString;
use serde::Serialize;
use url::Url;

use crate::config::{Config, ConfigError, MysqlTls, SinkConfig, SourceConfig};
use crate::ticdc::ChangefeedArgs;

mod changefeed;
mod elasticsearch;
mod instance;
mod kafka;
mod mysql;
mod store;

/// One hop's verdict: what was found and, when broken, what fixes it.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub hop: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// The hops checked, in pipeline order, up to and including the first broken one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub healthy: bool,
    pub hops: Vec<Hop>,
}

/// What doctor checks besides the configuration `run` takes.
#[derive(Debug, Clone)]
pub struct Options {
    /// A running instance's base URL (`/readyz`, `/metrics`).
    pub url: Option<Url>,
    /// The changefeed to check, when `CDC_TICDC_URL` is set.
    pub ticdc: Option<ChangefeedArgs>,
    /// Longest wait for any one server.
    pub timeout: Duration,
    /// `--canary`: a row to write and wait for at `url`.
    pub canary: Option<Canary>,
}

/// `--canary`: a row written into a table at the source, timed until the
/// running instance serves it from `/api/events`.
#[derive(Debug, Clone)]
pub struct Canary {
    /// `CDC_DOCTOR_CANARY_TABLE`'s database and table, created when absent.
    pub database: String,
    pub table: String,
    /// Whom to write as: needs CREATE, INSERT and UPDATE there.
    pub mysql_url: SecretString,
    pub tls: MysqlTls,
    /// Longest wait for the row to arrive.
    pub timeout: Duration,
}

/// Why a hop is broken.
#[derive(Debug)]
pub(super) struct Broken {
    detail: String,
    fix: String,
}

pub(super) fn broken(detail: impl Into<String>, fix: impl Into<String>) -> Broken {
    Broken {
        detail: detail.into(),
        fix: fix.into(),
    }
}

impl Report {
    /// A configuration that does not load: the first hop is broken, and
    /// nothing else can be checked (exit 2, as `run` exits on it).
    pub fn config_error(error: &ConfigError) -> Report {
        let mut report = Report::default();
        report.push(
            "config",
            Err(broken(
                error.to_string(),
                "correct the setting named above (`cdc-monitor run --help` lists every flag and CDC_* variable)",
            )),
        );
        report
    }

    /// Records a hop; false when it is broken (then nothing after it runs).
    fn push(&mut self, hop: &'static str, result: Result<String, Broken>) -> bool {
        let (ok, detail, fix) = match result {
            Ok(detail) => (true, detail, None),
            Err(b) => (false, b.detail, Some(b.fix)),
        };
        self.hops.push(Hop {
            hop,
            ok,
            detail,
            fix,
        });
        self.healthy = self.hops.iter().all(|h| h.ok);
        ok
    }

    /// 0 healthy, 1 a hop broken, 2 the configuration does not load.
    pub fn exit_code(&self) -> u8 {
        match self.hops.iter().find(|h| !h.ok) {
            None => 0,
            Some(h) if h.hop == "config" => 2,
            Some(_) => 1,
        }
    }

    /// One line per hop, `ok   source   ...` or `FAIL sink     ...` and its fix.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for h in &self.hops {
            let status = if h.ok { "ok" } else { "FAIL" };
            out.push_str(&format!("{status:<4} {:<8} {}\n", h.hop, h.detail));
            if let Some(fix) = &h.fix {
                out.push_str(&format!("     fix: {fix}\n"));
            }
        }
        out
    }

    /// `{"healthy": bool, "hops": [{"hop", "ok", "detail", "fix"}...]}`.
    pub fn json(&self) -> String {
        // A struct of strings and bools always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Checks each hop in pipeline order, stopping at the first broken one.
pub async fn diagnose(cfg: &Config, opts: &Options) -> Report {
    let mut report = Report::default();
    report.push("config", Ok(config_summary(cfg)));
    let source = match &cfg.source {
        SourceConfig::Kafka { .. } => {
            let (kafka, timeout) = (cfg.kafka.clone(), opts.timeout);
            let group = cfg.kafka.group_id.clone();
            kafka::blocking(move || {
                kafka::kafka_topics(&kafka, &kafka.topics, Some(&group), timeout)
            })
            .await
        }
        SourceConfig::Binlog(mysql) => mysql::binlog(mysql, opts.timeout).await,
    };
    if !report.push("source", source) {
        return report;
    }
    if let Some(args) = &opts.ticdc {
        if !report.push("ticdc", changefeed::changefeed(args).await) {
            return report;
        }
    }
    let sink = match &cfg.sink {
        SinkConfig::Elasticsearch(es) => {
            // Doctor's bound, not the bulk requests' (30 s by default).
            let es = crate::config::EsConfig {
                timeout: opts.timeout,
                ..(**es).clone()
            };
            elasticsearch::elasticsearch(&es).await
        }
        SinkConfig::Sqlite(store_cfg) => store::store(&cfg.data_dir, store_cfg),
        SinkConfig::Kafka { topic } => {
            let (kafka, topic, timeout) = (cfg.kafka.clone(), topic.clone(), opts.timeout);
            kafka::blocking(move || kafka::kafka_topics(&kafka, &[topic], None, timeout)).await
        }
    };
    if !report.push("sink", sink) {
        return report;
    }
    if let Some(url) = &opts.url {
        let token = cfg.http.metrics_token.as_ref().or(cfg.http.token.as_ref());
        if !report.push(
            "instance",
            instance::instance(url, token, opts.timeout).await,
        ) {
            return report;
        }
    }
    if let Some(c) = &opts.canary {
        let result = match (&opts.url, &cfg.source) {
            (None, _) => Err(broken(
                "--canary times the row's arrival at a running instance, and no --url names one",
                "add --url http://HOST:PORT (the instance's CDC_HTTP_ADDR)",
            )),
            (Some(_), SourceConfig::Binlog(m)) if !m.tables.accepts(&c.database, &c.table) => {
                Err(broken(
                    format!("the canary table {}.{} is not captured", c.database, c.table),
                    format!(
                        "add {}.{} to CDC_TABLES, or set CDC_DOCTOR_CANARY_TABLE to a captured table",
                        c.database, c.table
                    ),
                ))
            }
            (Some(url), _) => mysql::canary(c, url, cfg.http.token.as_ref(), opts.timeout).await,
        };
        report.push("canary", result);
    }
    report
}

fn config_summary(cfg: &Config) -> String {
    let source = match &cfg.source {
        SourceConfig::Kafka { .. } => "kafka",
        SourceConfig::Binlog(_) => "binlog",
    };
    format!(
        "source {source}, sink {}, data dir {}",
        cfg.sink.name(),
        cfg.data_dir.display()
    )
}

pub(super) fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_error_is_the_first_broken_hop_and_exit_2() {
        let e = ConfigError::Invalid {
            key: "CDC_ES_URL".into(),
            value: "x".into(),
            reason: "bad".into(),
        };
        let r = Report::config_error(&e);
        assert!(!r.healthy);
        assert_eq!(r.exit_code(), 2);
        assert!(r.human().starts_with("FAIL config   invalid value"));
    }

    #[test]
    fn a_broken_hop_after_config_exits_1() {
        let mut r = Report::default();
        r.push("config", Ok("fine".into()));
        assert_eq!(r.exit_code(), 0);
        r.push("sink", Err(broken("down", "start it")));
        assert_eq!(r.exit_code(), 1);
        assert_eq!(
            r.human(),
            "ok   config   fine\nFAIL sink     down\n     fix: start it\n"
        );
    }
}
