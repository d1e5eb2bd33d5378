//! The running instance's hop: `/readyz`, then `/metrics` (sink up, lag,
//! error counters).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{broken, Broken};
use crate::tls::error_chain;

/// `url` with `path` appended to its path.
pub(super) fn at_path(url: &Url, path: &str) -> Url {
    let mut u = url.clone();
    u.set_path(&format!("{}/{path}", url.path().trim_end_matches('/')));
    u
}

/// A running instance answers `/readyz` and `/metrics`; its lag and error counters.
pub(super) async fn instance(
    url: &Url,
    token: Option<&SecretString>,
    timeout: Duration,
) -> Result<String, Broken> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| broken(format!("http client: {e}"), "report this bug"))?;
    let at = |path: &str| at_path(url, path);
    let ready = client.get(at("readyz")).send().await.map_err(|e| {
        broken(
            format!(
                "nothing answers at {url}: is `cdc-monitor run` running? ({})",
                error_chain(&e.without_url())
            ),
            "start it (`cdc-monitor run` with these settings, or `docker compose up -d consumer`), or point --url at its CDC_HTTP_ADDR",
        )
    })?;
    if !ready.status().is_success() {
        let status = ready.status().as_u16();
        let body = ready.text().await.unwrap_or_default();
        return Err(broken(
            format!("{url} is not ready (HTTP {status}): {}", body.trim()),
            "the instance names the failing dependency above; read its log: `journalctl -u cdc-monitor | grep -E 'ERROR|WARN'` or `docker compose logs consumer | grep -E 'ERROR|WARN'`",
        ));
    }
    let mut request = client.get(at("metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token.expose_secret());
    }
    let metrics = request.send().await.map_err(|e| {
        broken(
            format!("{url}/metrics: {e}"),
            "retry; check the instance's log",
        )
    })?;
    if matches!(metrics.status().as_u16(), 401 | 403) {
        return Err(broken(
            format!(
                "{url}/metrics refuses doctor's token (HTTP {})",
                metrics.status()
            ),
            "set CDC_METRICS_TOKEN (or CDC_HTTP_TOKEN) to the instance's token",
        ));
    }
    let text = metrics.text().await.unwrap_or_default();
    let sample = |name: &str| samples(&text, name);
    if sample("cdc_sink_up").contains(&0.0) {
        return Err(broken(
            format!("{url}: the sink is down (cdc_sink_up 0), writes are being retried"),
            "see the sink hop above and the instance's log: `grep -E 'ERROR|WARN'` in it",
        ));
    }
    // Counters print as integers; an absent family (no event yet) is 0.
    let sum = |name: &str| sample(name).iter().fold(0.0, |a, b| a + b).round() as u64;
    let lag_seconds = sample("cdc_consumer_lag_seconds")
        .into_iter()
        .fold(0.0, f64::max);
    Ok(format!(
        "{url}: ready, lag {} records / {lag_seconds:.1}s, {} events stored, {} sink errors, {} decode errors, {} dead letters",
        sum("cdc_consumer_lag_records"),
        sum("cdc_events_total"),
        sum("cdc_sink_errors_total"),
        sum("cdc_decode_errors_total"),
        sum("cdc_dead_letter_messages_total"),
    ))
}

/// Every sample value of metric `name` in Prometheus text format.
fn samples(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_the_whole_metric_name() {
        let text = "# HELP cdc_sink_up x\ncdc_sink_up 1\ncdc_sink_up_extra 0\n\
                    cdc_events_total{op=\"insert\"} 3\ncdc_events_total{op=\"delete\"} 2\n";
        assert_eq!(samples(text, "cdc_sink_up"), [1.0]);
        assert_eq!(samples(text, "cdc_events_total"), [3.0, 2.0]);
    }
}
