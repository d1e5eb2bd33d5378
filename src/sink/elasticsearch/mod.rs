//! Elasticsearch sink on the Bulk API.
//!
//! `bulk` encodes documents, `client` speaks HTTP, `response` sorts a bulk
//! reply into done, retry and rejected items; `search` answers `/api/*`;
//! `state_index` keeps each row's current state beside the events, and
//! `data_stream` the lifecycle of data-stream mode.
//!
//! A request refused as a whole (400, 413) says only that something in it is
//! wrong; `send_splitting` halves it until the refused documents stand alone,
//! so that only those are dead-lettered. When every document is refused on
//! its own the fault is the mapping, not the data: `write` fails instead.

pub mod bulk;
pub mod client;
pub mod data_stream;
pub mod response;
pub mod search;
pub mod state_index;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::checkpoint::Checkpoint;
use crate::config::{EsConfig, EsMode, PipelineConfig};
use crate::event::ChangeEvent;
use crate::index_route::IndexRoute;
use crate::metrics::Metrics;
use crate::sink::elasticsearch::client::{BulkReply, EsClient};
use crate::sink::elasticsearch::response::{
    classify, merge_state_items, with_known_duplicates, BulkResponse, ItemOutcome,
};
use crate::sink::query::{EventFilter, EventPage, Stats};
use crate::sink::state::{RowKey, RowState};
use crate::sink::{Answer, Rejected, Sink, SinkError, StatePageRequest, WriteBatch, Written};

/// Writes change events to one index, or each to the index its route names.
pub struct ElasticsearchSink {
    client: EsClient,
    index: IndexRoute,
    /// `CDC_ES_STATE_INDEX`: each row's current state; `None`: off.
    state_index: Option<String>,
    tombstone_retention: Duration,
    mode: EsMode,
    /// Data-stream mode: backing indices' creation times, Unix ms (they never change).
    created: Mutex<HashMap<String, i64>>,
    backoff: Backoff,
    /// Bulk requests in flight at once.
    concurrency: usize,
    metrics: Metrics,
}

impl ElasticsearchSink {
    /// Builds the HTTP client; no request is made yet.
    pub fn new(
        es: &EsConfig,
        pipeline: &PipelineConfig,
        metrics: Metrics,
    ) -> Result<Self, SinkError> {
        Ok(ElasticsearchSink {
            client: EsClient::new(es, Some(metrics.clone()))?,
            index: es.index.clone(),
            state_index: es.state_index.clone(),
            tombstone_retention: es.tombstone_retention,
            mode: es.mode.clone(),
            created: Mutex::default(),
            backoff: Backoff::new(pipeline.retry_initial_backoff, pipeline.retry_max_backoff),
            concurrency: pipeline.concurrency,
            metrics,
        })
    }

    /// Waits before retry `attempt`, and at least until a node is up again.
    async fn pause(&self, attempt: u32, abort: &CancellationToken) -> Result<(), SinkError> {
        let delay = self.backoff.delay(attempt).max(self.client.next_up_in());
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = abort.cancelled() => Err(SinkError::Aborted),
        }
    }

    /// Sends `events[i]` for each `i` in `indices` as one bulk request, and
    /// counts it; the `create` of an event in `stored` is not sent (it is
    /// in an older backing index), its state actions are.
    async fn send_bulk(
        &self,
        events: &[ChangeEvent],
        indices: &[usize],
        stored: &HashSet<usize>,
        ingested_at: &str,
    ) -> Result<BulkReply, SinkError> {
        // One buffer for the request, sized from the events so it rarely grows.
        let estimate: usize = indices
            .iter()
            .map(|&i| events[i].estimated_bytes() + 2 * ingested_at.len())
            .sum();
        let mut body = Vec::with_capacity(estimate);
        let mut index = String::new();
        for &i in indices
            .iter()
            .filter(|i| stored.is_empty() || !stored.contains(i))
        {
            let e = &events[i];
            // From the event alone, never the clock: a replay meets its first copy.
            index.clear();
            self.index
                .push_index(&mut index, &e.database, &e.table, e.commit_time_ms);
            bulk::encode(&mut body, &index, e, ingested_at);
        }
        // After the events' actions, each event's state actions; their
        // items fold back into the event's (see `merge_state_items`).
        let mut state_counts = Vec::new();
        if let Some(state_index) = &self.state_index {
            state_counts = indices
                .iter()
                .map(|&i| state_index::encode(&mut body, state_index, &events[i]))
                .collect();
        }
        let started = Instant::now();
        let mut result = if body.is_empty() {
            Ok(BulkReply::Items(BulkResponse {
                errors: false,
                items: Vec::new(),
            }))
        } else {
            self.client.bulk(body).await
        };
        if indices.iter().any(|i| stored.contains(i)) {
            let skipped: Vec<bool> = indices.iter().map(|i| stored.contains(i)).collect();
            result = result.and_then(|reply| match reply {
                BulkReply::Items(r) => with_known_duplicates(r, &skipped)
                    .map(BulkReply::Items)
                    .map_err(SinkError::Response),
                refused => Ok(refused),
            });
        }
        if self.state_index.is_some() {
            result = result.and_then(|reply| match reply {
                BulkReply::Items(r) => merge_state_items(r, &state_counts)
                    .map(BulkReply::Items)
                    .map_err(SinkError::Response),
                refused => Ok(refused),
            });
        }
        let elapsed = started.elapsed().as_secs_f64();
        let label = match &result {
            Ok(BulkReply::Items(r)) if r.all_stored() => "ok",
            Ok(BulkReply::Items(_)) => "partial",
            Ok(BulkReply::Refused { .. }) => "error",
            Err(SinkError::Status { status: 429, .. }) => "rejected",
            Err(SinkError::Status { status, .. }) if *status >= 500 => "server_error",
            Err(SinkError::Status { .. }) => "error",
            Err(_) => "connection_error",
        };
        self.metrics.bulk_requests.with_label_values(&[label]).inc();
        self.metrics
            .bulk_duration
            .with_label_values(&[label])
            .observe(elapsed);
        debug!(
            items = indices.len(),
            outcome = label,
            elapsed,
            "bulk request done"
        );
        result
    }
}

impl ElasticsearchSink {
    /// Installs what the writes need (the ILM policy in data-stream mode,
    /// the events' template, the state index's template), each unless it
    /// exists, waiting for Elasticsearch to answer.
    pub async fn prepare(&self) -> Result<(), SinkError> {
        let events_template = format!("_index_template/{}", client::template_name(&self.index));
        let mut installs = Vec::new();
        match &self.mode {
            EsMode::Index => installs.push((
                "index template",
                events_template.clone(),
                client::index_template(&self.index),
            )),
            EsMode::DataStream(lifecycle) => {
                // The policy first: the template names it.
                installs.push((
                    "ILM policy",
                    format!("_ilm/policy/{}", data_stream::policy_name(&self.index)),
                    data_stream::policy(lifecycle),
                ));
                installs.push((
                    "data stream template",
                    events_template.clone(),
                    data_stream::template(&self.index),
                ));
            }
        }
        if let Some(state) = &self.state_index {
            installs.push((
                "state index template",
                format!("_index_template/{state}"),
                state_index::template(state, self.tombstone_retention),
            ));
            // Created now rather than by the first write: a bulk whose state
            // actions are all deletes need not rely on a delete creating it.
            installs.push(("state index", state.clone(), serde_json::json!({})));
        }
        for (what, path, body) in &installs {
            self.install(what, path, body).await?;
        }
        if self.mode != EsMode::Index {
            self.check_data_stream_template(&events_template).await?;
        }
        Ok(())
    }

    /// Fails when the events' template was there already but declares no
    /// data stream (installed in index mode): writes would go to plain
    /// indices, growing without the lifecycle, while the mode says otherwise.
    async fn check_data_stream_template(&self, path: &str) -> Result<(), SinkError> {
        let Some(reply) = self.client.get_json(path).await? else {
            return Ok(());
        };
        let declares = reply["index_templates"].as_array().is_some_and(|ts| {
            ts.iter()
                .all(|t| t["index_template"].get("data_stream").is_some())
        });
        if declares {
            return Ok(());
        }
        Err(SinkError::Config(format!(
            "CDC_ES_MODE=data_stream, but the index template {path} exists without a data stream (installed with CDC_ES_MODE=index?): delete it, or set another CDC_ES_INDEX"
        )))
    }

    async fn install(
        &self,
        what: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(), SinkError> {
        // Elasticsearch may still be starting: wait for it like for any
        // outage; the caller races this with shutdown.
        let abort = CancellationToken::new();
        let mut attempt = 0;
        loop {
            match self.client.ensure(path, body).await {
                Ok(created) => {
                    if created {
                        tracing::info!(index = %self.index, path, "{what} installed");
                    }
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    warn!(index = %self.index, path, attempt, error = %e, "cannot install {what} yet");
                    attempt = (attempt + 1).min(16);
                    self.pause(attempt, &abort).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Bulk-writes `events`, retrying failed items until `abort`; returns
    /// the ones Elasticsearch refuses for good.
    pub async fn write(
        &self,
        events: &[ChangeEvent],
        _checkpoints: &[Checkpoint],
        abort: &CancellationToken,
    ) -> Result<Vec<Rejected>, SinkError> {
        let ingested_at = crate::clock::now_rfc3339();
        // Indexes into `events` still to be written; shrinks to the failed
        // items after a partial failure, so only those are sent again.
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut rejected = Vec::new();
        let mut split = false;
        let mut attempt = 0u32;
        while !pending.is_empty() {
            let stored = match self.stored_before_rollover(events, &pending).await {
                Ok(stored) => stored,
                Err(e) if e.is_retryable() => {
                    attempt += 1;
                    let error = format!("looking up earlier copies: {e}");
                    self.metrics.sink_retry(
                        "elasticsearch",
                        failure_label(&e),
                        pending.len(),
                        attempt,
                        &error,
                    );
                    self.pause(attempt, abort).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let round = {
                let pending = &pending;
                let stored = &stored;
                let ingested_at = ingested_at.as_str();
                send_splitting(pending.len(), |range| {
                    self.send_bulk(events, &pending[range], stored, ingested_at)
                })
                .await
            };
            split |= round.split;
            let mut retry = Vec::new();
            let mut retry_reason = None;
            for (&i, outcome) in pending.iter().zip(round.outcomes) {
                match outcome {
                    ItemOutcome::Stored | ItemOutcome::Duplicate => {}
                    ItemOutcome::Retry { label, reason } => {
                        retry_reason.get_or_insert((label, reason));
                        retry.push(i);
                    }
                    ItemOutcome::Rejected(reason) => rejected.push(Rejected { index: i, reason }),
                }
            }
            pending = retry;
            let (label, error) = match (round.failure, retry_reason) {
                (Some(e), _) if !e.is_retryable() => return Err(e),
                (Some(e), _) => (failure_label(&e), e.to_string()),
                (None, Some((label, reason))) => (
                    label,
                    format!("{} bulk items failed, e.g. {reason}", pending.len()),
                ),
                (None, None) => break,
            };
            attempt += 1;
            self.metrics
                .sink_retry("elasticsearch", label, pending.len(), attempt, &error);
            self.pause(attempt, abort).await?;
        }
        if split && rejected.len() == events.len() {
            // Dead-lettering the whole stream would hide a broken mapping or
            // template behind a growing dead-letter topic: stop instead.
            return Err(everything_refused(&rejected));
        }
        self.clear_state(events, abort).await?;
        Ok(rejected)
    }

    /// Deletes from the state index the rows that `TRUNCATE`/`DROP`
    /// statements in `events` removed: those of a version below the
    /// statement's (see `sink::state::cleared`). Rows written after the
    /// statement, in this batch too, have higher versions and stay; so the
    /// order against the bulk does not matter, and a replay is harmless.
    async fn clear_state(
        &self,
        events: &[ChangeEvent],
        abort: &CancellationToken,
    ) -> Result<(), SinkError> {
        let Some(state_index) = &self.state_index else {
            return Ok(());
        };
        for e in events {
            for cleared in crate::sink::state::cleared(e) {
                let mut filter = vec![
                    serde_json::json!({"term": {"database": cleared.database}}),
                    serde_json::json!({"range": {"version": {"lt": e.version()}}}),
                ];
                if let Some(table) = &cleared.table {
                    filter.push(serde_json::json!({"term": {"table": table}}));
                }
                let query = serde_json::json!({"bool": {"filter": filter}});
                let mut attempt = 0;
                while let Err(error) = self.client.delete_by_query(state_index, &query).await {
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    attempt += 1;
                    self.metrics.sink_retry(
                        "elasticsearch",
                        failure_label(&error),
                        1,
                        attempt,
                        &format!("clearing the state of {}: {error}", cleared.database),
                    );
                    self.pause(attempt, abort).await?;
                }
            }
        }
        Ok(())
    }

    /// Data-stream mode: which of the `pending` events an older backing
    /// index already holds (a replay across a rollover, which `create` into
    /// the write index would store twice); see `data_stream`. Empty in
    /// index mode, and while no stream has rolled over.
    async fn stored_before_rollover(
        &self,
        events: &[ChangeEvent],
        pending: &[usize],
    ) -> Result<HashSet<usize>, SinkError> {
        if self.mode == EsMode::Index {
            return Ok(HashSet::new());
        }
        let streams: HashMap<String, Vec<String>> = self
            .client
            .data_streams(&self.index.pattern())
            .await?
            .into_iter()
            .filter(|(_, backing)| backing.len() > 1)
            .collect();
        if streams.is_empty() {
            return Ok(HashSet::new());
        }
        let unknown: Vec<String> = {
            let created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            streams
                .values()
                .flatten()
                .filter(|i| !created.contains_key(*i))
                .cloned()
                .collect()
        };
        if !unknown.is_empty() {
            let dates = self.client.creation_dates(&unknown).await?;
            let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            created.extend(dates);
        }
        let backing: HashMap<&str, Vec<(String, i64)>> = {
            let created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            let mut backing = HashMap::new();
            for (name, indices) in &streams {
                let mut dated = Vec::with_capacity(indices.len());
                for index in indices {
                    let Some(&date) = created.get(index) else {
                        return Err(SinkError::Response(format!(
                            "no creation date for backing index {index}"
                        )));
                    };
                    dated.push((index.clone(), date));
                }
                backing.insert(name.as_str(), dated);
            }
            backing
        };
        let mut lookups: Vec<(String, String)> = Vec::new();
        let mut owners: Vec<usize> = Vec::new();
        for &i in pending {
            let e = &events[i];
            let stream = self
                .index
                .index_for(&e.database, &e.table, e.commit_time_ms);
            let Some(indices) = backing.get(stream.as_str()) else {
                continue;
            };
            let id = e.document_id().to_string();
            for index in data_stream::earlier_copies(indices, e.commit_time_ms) {
                lookups.push((index.to_owned(), id.clone()));
                owners.push(i);
            }
        }
        if lookups.is_empty() {
            return Ok(HashSet::new());
        }
        let found = self.client.exists(&lookups).await?;
        let stored: HashSet<usize> = owners
            .into_iter()
            .zip(found)
            .filter_map(|(i, found)| found.then_some(i))
            .collect();
        if !stored.is_empty() {
            tracing::info!(
                events = stored.len(),
                looked_up = lookups.len(),
                "events already stored in an older backing index: not created again"
            );
        }
        Ok(stored)
    }

    /// Succeeds when the cluster answers.
    pub async fn check(&self) -> Result<(), SinkError> {
        // The last write's outcome is added by the pipeline's readiness.
        self.client.ping().await
    }
}

impl Sink for ElasticsearchSink {
    fn name(&self) -> &'static str {
        "elasticsearch"
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(ElasticsearchSink::prepare(self))
    }

    fn write<'a>(&'a self, batch: WriteBatch<'a>, abort: &'a CancellationToken) -> Written<'a> {
        let WriteBatch {
            events,
            checkpoints,
        } = batch;
        Box::pin(ElasticsearchSink::write(self, events, checkpoints, abort))
    }

    fn check(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(ElasticsearchSink::check(self))
    }

    fn searchable(&self) -> bool {
        true
    }

    fn events<'a>(&'a self, filter: &'a EventFilter) -> Answer<'a, EventPage> {
        Box::pin(ElasticsearchSink::events(self, filter))
    }

    fn row<'a>(&'a self, key: &'a RowKey) -> Answer<'a, Option<RowState>> {
        Box::pin(ElasticsearchSink::row(self, key))
    }

    fn row_history<'a>(&'a self, key: &'a RowKey, limit: usize) -> Answer<'a, EventPage> {
        Box::pin(ElasticsearchSink::row_history(self, key, limit))
    }

    fn state_page(&self, page: StatePageRequest) -> Answer<'_, crate::sink::StatePage> {
        Box::pin(async move { ElasticsearchSink::state_page(self, &page).await })
    }

    fn stats(&self, window: Duration, bucket: Duration) -> Answer<'_, Stats> {
        Box::pin(ElasticsearchSink::stats(self, window, bucket))
    }
}

/// The metric label of a whole-request failure.
fn failure_label(e: &SinkError) -> &'static str {
    match e {
        SinkError::Status { status: 429, .. } => "too_many_requests",
        SinkError::Status { status, .. } if *status >= 500 => "server_error",
        SinkError::Status { .. } => "http_status",
        SinkError::Response(_) => "malformed_reply",
        _ => "connection",
    }
}

/// The error for a batch whose every document Elasticsearch refused.
fn everything_refused(rejected: &[Rejected]) -> SinkError {
    let reason = rejected.first().map_or("", |r| r.reason.as_str());
    let fix = if reason.starts_with("413") {
        "raise http.max_content_length or the proxy's body limit"
    } else {
        "fix the index mapping or template"
    };
    SinkError::Config(format!(
        "Elasticsearch refused every document of the bulk ({} documents, e.g. {reason}); {fix}",
        rejected.len()
    ))
}

/// What one round of sending made of each of its items.
#[derive(Debug)]
struct Round {
    outcomes: Vec<ItemOutcome>,
    /// A request failed as a whole with this error; its items, and those
    /// not sent yet, are `Retry`.
    failure: Option<SinkError>,
    /// Some request was refused as a whole and split.
    split: bool,
}

/// Sends items `0..n` through `send` (which sends a range of them as one
/// bulk request). A request refused as a whole (400, 413) is split in
/// halves, recursively, until each refused document is alone: that one is
/// `Rejected` with Elasticsearch's reason, and the rest is stored. The first
/// failure of another kind ends the round.
async fn send_splitting<F, Fut>(n: usize, mut send: F) -> Round
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Result<BulkReply, SinkError>>,
{
    let mut outcomes: Vec<Option<ItemOutcome>> = vec![None; n];
    let mut split = false;
    let mut failure = None;
    // Depth first, left half first: requests go out in event order.
    let mut todo: Vec<Range<usize>> = Vec::new();
    todo.push(0..n);
    while let Some(range) = todo.pop() {
        let failed = match send(range.clone()).await {
            Ok(BulkReply::Items(r)) => match classify(&r, range.len()) {
                Ok(items) => {
                    for (slot, item) in outcomes[range.clone()].iter_mut().zip(items) {
                        *slot = Some(item);
                    }
                    None
                }
                Err(e) => Some(SinkError::Response(e)),
            },
            Ok(BulkReply::Refused { reason, .. }) if range.len() == 1 => {
                outcomes[range.start] = Some(ItemOutcome::Rejected(reason));
                None
            }
            Ok(BulkReply::Refused { .. }) => {
                split = true;
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
                None
            }
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            for range in todo.drain(..).chain([range]) {
                for slot in &mut outcomes[range] {
                    *slot = Some(retry_after(&e));
                }
            }
            failure = Some(e);
            break;
        }
    }
    Round {
        // Every range was answered or marked for retry above; a gap would
        // be a bug here, and retrying is the outcome that loses nothing.
        outcomes: outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| retry_after(&SinkError::Response("no outcome".into()))))
            .collect(),
        failure,
        split,
    }
}

fn retry_after(e: &SinkError) -> ItemOutcome {
    ItemOutcome::Retry {
        label: failure_label(e),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::elasticsearch::response::BulkResponse;
    use std::cell::RefCell;

    /// A fake cluster: refuses (400) any request holding a poisoned item,
    /// and (413) any request of more than `max_items` items.
    struct FakeCluster {
        poisoned: Vec<usize>,
        max_items: usize,
        requests: RefCell<Vec<Range<usize>>>,
    }

    impl FakeCluster {
        fn new(poisoned: &[usize], max_items: usize) -> FakeCluster {
            FakeCluster {
                poisoned: poisoned.to_vec(),
                max_items,
                requests: RefCell::new(Vec::new()),
            }
        }

        async fn send(&self, range: Range<usize>) -> Result<BulkReply, SinkError> {
            self.requests.borrow_mut().push(range.clone());
            if range.len() > self.max_items {
                return Ok(BulkReply::Refused {
                    status: 413,
                    reason: "413 request too large".into(),
                });
            }
            if self.poisoned.iter().any(|p| range.contains(p)) {
                return Ok(BulkReply::Refused {
                    status: 400,
                    reason: "400 mapper_parsing_exception: poisoned".into(),
                });
            }
            Ok(BulkReply::Items(created(range.len())))
        }
    }

    fn created(n: usize) -> BulkResponse {
        let items = vec![r#"{"create":{"status":201}}"#; n].join(",");
        serde_json::from_str(&format!(r#"{{"errors":false,"items":[{items}]}}"#)).unwrap()
    }

    fn rejected(round: &Round) -> Vec<usize> {
        (0..round.outcomes.len())
            .filter(|&i| matches!(round.outcomes[i], ItemOutcome::Rejected(_)))
            .collect()
    }

    #[tokio::test]
    async fn a_refused_bulk_is_split_until_the_poisoned_document_is_alone() {
        let es = FakeCluster::new(&[37], usize::MAX);
        let round = send_splitting(100, |r| es.send(r)).await;
        assert!(round.split && round.failure.is_none());
        assert_eq!(rejected(&round), [37]);
        assert_eq!(
            round.outcomes[37],
            ItemOutcome::Rejected("400 mapper_parsing_exception: poisoned".into())
        );
        assert_eq!(
            round
                .outcomes
                .iter()
                .filter(|o| **o == ItemOutcome::Stored)
                .count(),
            99
        );
        // Two requests per halving: about 2 * log2(100), not one per document.
        let requests = es.requests.borrow().len();
        assert!(requests <= 2 * 7 + 1, "{requests} requests");
    }

    #[tokio::test]
    async fn a_bulk_too_large_is_split_until_the_parts_fit_and_all_is_stored() {
        let es = FakeCluster::new(&[], 8);
        let round = send_splitting(100, |r| es.send(r)).await;
        assert!(round.split && round.failure.is_none());
        assert!(round.outcomes.iter().all(|o| *o == ItemOutcome::Stored));
    }

    #[tokio::test]
    async fn a_single_document_too_large_is_rejected_as_too_large() {
        let es = FakeCluster::new(&[], 0);
        let round = send_splitting(1, |r| es.send(r)).await;
        assert!(!round.split);
        assert_eq!(
            round.outcomes,
            [ItemOutcome::Rejected("413 request too large".into())]
        );
    }

    #[tokio::test]
    async fn every_document_refused_alone_is_found_by_splitting() {
        let es = FakeCluster::new(&[0, 1, 2, 3, 4], usize::MAX);
        let round = send_splitting(5, |r| es.send(r)).await;
        assert!(round.split);
        assert_eq!(rejected(&round), [0, 1, 2, 3, 4]);
        let all: Vec<Rejected> = (0..5)
            .map(|index| Rejected {
                index,
                reason: "400 mapper_parsing_exception: poisoned".into(),
            })
            .collect();
        let err = everything_refused(&all);
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains("refused every document")
                && text.contains("mapper_parsing_exception")
                && text.contains("fix the index mapping or template"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_transient_failure_while_splitting_retries_only_what_was_not_stored() {
        let es = FakeCluster::new(&[9], usize::MAX);
        let calls = RefCell::new(0);
        let round = send_splitting(10, |r| {
            *calls.borrow_mut() += 1;
            let overloaded = *calls.borrow() == 3;
            let reply = es.send(r);
            async move {
                if overloaded {
                    return Err(SinkError::Status {
                        status: 503,
                        body: "unavailable".into(),
                    });
                }
                reply.await
            }
        })
        .await;
        // 0..10 refused, 0..5 stored, then 5..10 failed with 503.
        assert!(matches!(
            round.failure,
            Some(SinkError::Status { status: 503, .. })
        ));
        assert!(round.outcomes[..5]
            .iter()
            .all(|o| *o == ItemOutcome::Stored));
        assert!(round.outcomes[5..].iter().all(|o| matches!(
            o,
            ItemOutcome::Retry {
                label: "server_error",
                ..
            }
        )));
    }
}
