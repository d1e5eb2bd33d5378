//! `/api/events` and `/api/stats` over the index, with `_search`.
//!
//! Pages are newest first and continue with `search_after` (a point in time
//! is not needed: the index only grows, so a new event can only appear
//! before the current page, never inside the pages still to come). `_id`
//! cannot be sorted on in Elasticsearch 8 (`indices.id_field_data.enabled`
//! is off), so the sort key is `@timestamp`, `commit_ts`, `ingested_at` and
//! the Kafka partition and offset. Binlog events of one transaction can
//! still share a key; a page never ends inside such a group (see
//! `page_from_reply`), so `search_after` cannot skip part of one.
//!
//! A routed `CDC_ES_INDEX` is searched through its wildcard (`cdc-*-*`); the
//! sort key holds nothing per index, so pages run in one order across every
//! index, and events of different indices that tie form one group like any
//! other (the same rule keeps a page from splitting it).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::clock::now_millis;
use crate::event::Row;
use crate::sink::elasticsearch::{state_index, ElasticsearchSink};
use crate::sink::query::{EventFilter, EventPage, QueryError, RateSeries, Stats};
use crate::sink::state::{RowKey, RowState};
use crate::sink::StatePageRequest;

/// Row fields `q` searches: `pk`, `data` and `old` are `flattened` (every
/// leaf value is a keyword), `sql` is text.
const SEARCH_FIELDS: [&str; 4] = ["pk", "data", "old", "sql"];

/// The `simple_query_string` operators `q` may use.
const SEARCH_FLAGS: &str = "AND|OR|NOT|PHRASE|PRECEDENCE|ESCAPE|WHITESPACE";

/// Elasticsearch stops a search after this, server side, and answers with
/// what it found: a heavy query never outlives the API's own timeout.
const SEARCH_TIMEOUT: &str = "5s";

/// Most tables the per-table counts report.
const MAX_TABLES: usize = 1000;
/// Most tables with a rate series: with the API's 360 buckets at most, the
/// aggregation stays well below `search.max_buckets` (65,536 by default).
const MAX_RATE_TABLES: usize = 20;

impl ElasticsearchSink {
    /// One page of events matching `f`, newest first; each carries its `_id` as `id`.
    pub async fn events(&self, f: &EventFilter) -> Result<EventPage, QueryError> {
        let after = f.cursor.as_deref().map(decode_cursor).transpose()?;
        let body = events_request(f, after.as_deref());
        let reply: SearchReply = self
            .client
            .search(&self.index.pattern(), &body)
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        page_from_reply(reply, f.limit)
    }

    /// The current state of the row `key` from the state index; `None`
    /// when it holds no document (never seen, or deleted).
    pub async fn row(&self, key: &RowKey) -> Result<Option<RowState>, QueryError> {
        let Some(index) = &self.state_index else {
            return Err(QueryError::Unavailable(
                "no current-state index: set CDC_ES_STATE_INDEX (es.state_index)".into(),
            ));
        };
        let id = key.id().to_string();
        let source = self
            .client
            .get_source(index, &id)
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        source
            .map(|s| state_index::row_state(&s))
            .transpose()
            .map_err(|e| QueryError::Unavailable(format!("state document {id}: {e}")))
    }

    /// One page of `database.table`'s rows in the state index, by event id,
    /// after `cursor` (the last event id of the page before).
    pub async fn state_page(
        &self,
        page: &StatePageRequest,
    ) -> Result<crate::sink::StatePage, QueryError> {
        let StatePageRequest {
            database,
            table,
            cursor,
            limit,
        } = page;
        let limit = *limit;
        let Some(index) = &self.state_index else {
            return Err(QueryError::Unavailable(
                "no current-state index: set CDC_ES_STATE_INDEX (es.state_index)".into(),
            ));
        };
        let mut body = json!({
            "size": limit,
            "query": {"bool": {"filter": [
                {"term": {"database": database}},
                {"term": {"table": table}}
            ]}},
            // Unique among live rows: one event sets at most one row.
            "sort": [{"event_id": {"order": "asc"}}]
        });
        if let Some(after) = cursor {
            body["search_after"] = json!([after]);
        }
        let reply: SearchReply = self
            .client
            .search(index, &body)
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        let full = reply.hits.hits.len() == limit;
        let mut rows = Vec::with_capacity(reply.hits.hits.len());
        let mut last = None;
        for hit in reply.hits.hits {
            let source: Value = serde_json::from_str(hit.source.get())
                .map_err(|e| QueryError::Unavailable(format!("state document {}: {e}", hit.id)))?;
            let (key, state) = state_index::keyed_row_state(&source)
                .map_err(|e| QueryError::Unavailable(format!("state document {}: {e}", hit.id)))?;
            last = hit.sort.first().and_then(|v| v.as_str().map(str::to_owned));
            rows.push((key, state));
        }
        Ok((rows, if full { last } else { None }))
    }

    /// The stored events of the row `key`, oldest first, at most `limit`.
    pub async fn row_history(&self, key: &RowKey, limit: usize) -> Result<EventPage, QueryError> {
        let values: Vec<Value> = serde_json::from_str(&key.values)
            .map_err(|e| QueryError::Unavailable(format!("row key {}: {e}", key.values)))?;
        let body = history_request(key, &values, limit);
        let reply: SearchReply = self
            .client
            .search(&self.index.pattern(), &body)
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        history_from_reply(reply, key)
    }

    /// Counts over every event, and the rate by table over the last `window`.
    pub async fn stats(&self, window: Duration, bucket: Duration) -> Result<Stats, QueryError> {
        let bucket_ms = bucket.as_millis() as i64;
        if bucket_ms < 1000 || window < bucket {
            return Err(QueryError::Invalid {
                param: "bucket",
                reason: format!("{bucket:?} must be at least 1s and at most the window"),
            });
        }
        let now = now_millis();
        // Buckets aligned to multiples of their width (as `date_histogram`
        // aligns them), the newest being the one in progress.
        let buckets = (window.as_millis() as i64 + bucket_ms - 1) / bucket_ms;
        let start = now.div_euclid(bucket_ms) * bucket_ms - (buckets - 1) * bucket_ms;
        let body = stats_request(start, bucket_ms);
        let reply: SearchReply = self
            .client
            .search(&self.index.pattern(), &body)
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        stats_from_reply(reply, start, now, bucket_ms)
    }
}

/// The sort key, newest first; `search_after` takes one value per entry.
fn sort() -> Value {
    json!([
        {"@timestamp": {"order": "desc"}},
        {"commit_ts": {"order": "desc", "missing": "_last"}},
        {"ingested_at": {"order": "desc"}},
        {"kafka.partition": {"order": "asc", "missing": "_last"}},
        {"kafka.offset": {"order": "desc", "missing": "_last"}}
    ])
}

const SORT_LEN: usize = 5;

/// The `_search` body for one page; asks for one hit more than the page to
/// know whether another page follows.
fn events_request(f: &EventFilter, search_after: Option<&[Value]>) -> Value {
    let mut filter = Vec::new();
    for (field, value) in [
        ("database", f.database.as_deref()),
        ("table", f.table.as_deref()),
        ("op", f.op.map(|o| o.as_str())),
    ] {
        if let Some(v) = value {
            filter.push(json!({"term": {field: v}}));
        }
    }
    if f.since_ms.is_some() || f.until_ms.is_some() {
        let mut range = json!({"format": "epoch_millis"});
        if let Some(since) = f.since_ms {
            range["gte"] = since.into();
        }
        if let Some(until) = f.until_ms {
            range["lte"] = until.into();
        }
        filter.push(json!({"range": {"@timestamp": range}}));
    }
    if let Some(q) = f.q.as_deref().filter(|q| !q.trim().is_empty()) {
        filter.push(json!({"simple_query_string": {
            "query": q,
            "fields": SEARCH_FIELDS,
            "default_operator": "and",
            // A number-looking term against a date or number leaf must not fail the search.
            "lenient": true,
            // Terms, phrases and -exclusions, as the dashboard offers; no
            // fuzzy, prefix or proximity operators, which an API caller
            // could use to make one search expensive.
            "flags": SEARCH_FLAGS
        }}));
    }
    let mut body = json!({
        "size": f.limit + 1,
        "timeout": SEARCH_TIMEOUT,
        "track_total_hits": false,
        "query": {"bool": {"filter": filter}},
        "sort": sort(),
    });
    if let Some(after) = search_after {
        body["search_after"] = Value::Array(after.to_vec());
    }
    body
}

/// The `_search` body for a row's events, oldest first: database and table,
/// and each key value as a term on the flattened `pk` (every leaf is a
/// keyword), or on `data` for a keyless table, whose key is the whole row.
/// A term matches the value under any column, so `history_from_reply`
/// keeps only the exact matches. Nulls cannot be terms: the filter keeps them.
fn history_request(key: &RowKey, values: &[Value], limit: usize) -> Value {
    let mut filter = vec![
        json!({"term": {"database": key.database}}),
        json!({"term": {"table": key.table}}),
    ];
    // Which of the two the key came from is not in the key; a keyless
    // table's events have an empty `pk`, so asking `pk` first would miss
    // them: match either.
    for v in values.iter().filter(|v| !v.is_null()) {
        let term = match v {
            Value::String(s) => Value::String(s.clone()),
            other => Value::String(other.to_string()),
        };
        filter.push(json!({"bool": {"should": [
            {"term": {"pk": term}},
            {"bool": {
                "must_not": {"exists": {"field": "pk"}},
                "filter": {"term": {"data": term}}
            }}
        ], "minimum_should_match": 1}}));
    }
    json!({
        "size": limit,
        "timeout": SEARCH_TIMEOUT,
        "track_total_hits": false,
        "query": {"bool": {"filter": filter}},
        "sort": [
            {"commit_ts": {"order": "asc", "missing": "_last"}},
            {"@timestamp": {"order": "asc"}}
        ],
    })
}

/// The hits that are events of `key` exactly, oldest first.
fn history_from_reply(reply: SearchReply, key: &RowKey) -> Result<EventPage, QueryError> {
    #[derive(Deserialize)]
    struct RowOf {
        database: String,
        table: String,
        #[serde(default)]
        pk: Option<Row>,
        #[serde(default)]
        data: Option<Row>,
    }
    let mut events = Vec::new();
    for hit in &reply.hits.hits {
        let r: RowOf = serde_json::from_str(hit.source.get())
            .map_err(|e| QueryError::Unavailable(format!("document {}: {e}", hit.id)))?;
        let (pk, data) = (r.pk.unwrap_or_default(), r.data.unwrap_or_default());
        if RowKey::of(&r.database, &r.table, &pk, &data) == *key {
            events.push(with_id(&hit.id, &hit.source)?);
        }
    }
    Ok(EventPage {
        events,
        next_cursor: None,
    })
}

/// The `_search` body for the stats: counts by op and table over
/// everything, and per-table histograms of `ingested_at` from `start_ms`.
fn stats_request(start_ms: i64, bucket_ms: i64) -> Value {
    let table_key = json!([{"field": "database"}, {"field": "table"}]);
    json!({
        "size": 0,
        "timeout": SEARCH_TIMEOUT,
        "track_total_hits": true,
        "aggs": {
            "by_op": {"terms": {"field": "op", "size": 10}},
            "by_table": {"multi_terms": {"terms": table_key, "size": MAX_TABLES}},
            "recent": {
                "filter": {"range": {"ingested_at": {"gte": start_ms, "format": "epoch_millis"}}},
                "aggs": {"by_table": {
                    "multi_terms": {"terms": table_key, "size": MAX_RATE_TABLES},
                    "aggs": {"per_bucket": {"date_histogram": {
                        "field": "ingested_at",
                        "fixed_interval": format!("{bucket_ms}ms"),
                        "min_doc_count": 1
                    }}}
                }}
            }
        }
    })
}

/// The parts of a `_search` reply used here.
#[derive(Debug, Deserialize)]
struct SearchReply {
    hits: Hits,
    /// Absent when no index matched.
    #[serde(default)]
    aggregations: Option<Aggregations>,
}

#[derive(Debug, Deserialize)]
struct Hits {
    /// `{"value": N, "relation": "eq"}`; absent with `track_total_hits: false`.
    #[serde(default)]
    total: Option<Total>,
    #[serde(default)]
    hits: Vec<Hit>,
}

#[derive(Debug, Deserialize)]
struct Total {
    value: u64,
}

#[derive(Debug, Deserialize)]
struct Hit {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_source")]
    source: Box<RawValue>,
    #[serde(default)]
    sort: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Aggregations {
    #[serde(default)]
    by_op: Buckets<String>,
    #[serde(default)]
    by_table: Buckets<Vec<String>>,
    #[serde(default)]
    recent: Option<Recent>,
}

#[derive(Debug, Deserialize)]
struct Recent {
    #[serde(default)]
    by_table: Buckets<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Buckets<K> {
    buckets: Vec<Bucket<K>>,
}

impl<K> Default for Buckets<K> {
    fn default() -> Self {
        Buckets {
            buckets: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Bucket<K> {
    key: K,
    doc_count: u64,
    #[serde(default)]
    per_bucket: Option<Buckets<i64>>,
}

/// The page of at most `limit` hits and, when more match, the cursor after its last one.
fn page_from_reply(reply: SearchReply, limit: usize) -> Result<EventPage, QueryError> {
    let hits = reply.hits.hits;
    let mut end = hits.len().min(limit);
    let more = hits.len() > limit;
    if more && end > 0 && hits[end].sort == hits[end - 1].sort {
        // The extra hit ties with the page's last: `search_after` would skip
        // the rest of that group, so end the page before the group instead.
        // A group larger than a page cannot be split safely; it is returned
        // whole up to the limit and its remainder is skipped.
        let last = &hits[end - 1].sort;
        let group_start = hits[..end]
            .iter()
            .position(|h| &h.sort == last)
            .unwrap_or(0);
        if group_start > 0 {
            end = group_start;
        }
    }
    let next_cursor = if more {
        Some(encode_cursor(&hits[end - 1].sort)?)
    } else {
        None
    };
    let events = hits[..end]
        .iter()
        .map(|h| with_id(&h.id, &h.source))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EventPage {
        events,
        next_cursor,
    })
}

/// `source` with `"id": id` added first, its own bytes otherwise unchanged.
fn with_id(id: &str, source: &RawValue) -> Result<Box<RawValue>, QueryError> {
    let text = source.get().trim_start();
    let Some(rest) = text.strip_prefix('{') else {
        return Err(QueryError::Unavailable(format!(
            "document {id} is not a JSON object"
        )));
    };
    // Serialising a string cannot fail.
    let id_json = serde_json::to_string(id).expect("string serialises");
    let sep = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    RawValue::from_string(format!("{{\"id\":{id_json}{sep}{rest}"))
        .map_err(|e| QueryError::Unavailable(format!("document {id}: {e}")))
}

fn encode_cursor(sort: &[Value]) -> Result<String, QueryError> {
    if sort.len() != SORT_LEN {
        return Err(QueryError::Unavailable(format!(
            "search hit has {} sort values, expected {SORT_LEN}",
            sort.len()
        )));
    }
    // A Vec of Values always serialises.
    let text = serde_json::to_vec(sort).expect("values serialise");
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text))
}

fn decode_cursor(cursor: &str) -> Result<Vec<Value>, QueryError> {
    let invalid = || QueryError::Invalid {
        param: "cursor",
        reason: format!("{cursor:?} is not a cursor this server returned"),
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid())?;
    let values: Vec<Value> = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let scalar = |v: &Value| v.is_number() || v.is_string() || v.is_null();
    if values.len() != SORT_LEN || !values.iter().all(scalar) {
        return Err(invalid());
    }
    Ok(values)
}

fn table_name(key: &[String]) -> String {
    key.join(".")
}

/// Stats from the reply; rate buckets from `start_ms` to `now_ms`, zeros
/// filled in. The newest bucket's rate is over the time elapsed in it so
/// far (at least a second), so a live chart does not dip at its end.
fn stats_from_reply(
    reply: SearchReply,
    start_ms: i64,
    now_ms: i64,
    bucket_ms: i64,
) -> Result<Stats, QueryError> {
    let aggs = reply.aggregations.unwrap_or_default();
    let by_op: BTreeMap<String, u64> = aggs
        .by_op
        .buckets
        .into_iter()
        .map(|b| (b.key, b.doc_count))
        .collect();
    let by_table: BTreeMap<String, u64> = aggs
        .by_table
        .buckets
        .into_iter()
        .map(|b| (table_name(&b.key), b.doc_count))
        .collect();
    let total = match reply.hits.total {
        Some(t) => t.value,
        None => by_op.values().sum(),
    };
    let starts: Vec<i64> = (0..)
        .map(|i| start_ms + i * bucket_ms)
        .take_while(|s| *s <= now_ms)
        .collect();
    let seconds_in = |start: i64| ((now_ms - start).clamp(1000, bucket_ms)) as f64 / 1000.0;
    let rate = aggs
        .recent
        .map(|r| r.by_table.buckets)
        .unwrap_or_default()
        .into_iter()
        .map(|table| {
            let counts: BTreeMap<i64, u64> = table
                .per_bucket
                .map(|h| h.buckets)
                .unwrap_or_default()
                .into_iter()
                .map(|b| (b.key, b.doc_count))
                .collect();
            RateSeries {
                table: table_name(&table.key),
                points: starts
                    .iter()
                    .map(|s| {
                        let n = counts.get(s).copied().unwrap_or(0);
                        (*s, n as f64 / seconds_in(*s))
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Stats {
        total,
        by_op,
        by_table,
        rate,
        bucket_seconds: (bucket_ms / 1000) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Op;

    fn filter() -> EventFilter {
        EventFilter {
            limit: 2,
            ..EventFilter::default()
        }
    }

    #[test]
    fn unfiltered_request_sorts_newest_first_and_asks_one_more() {
        let body = events_request(&filter(), None);
        assert_eq!(body["size"], 3);
        assert_eq!(body["query"]["bool"]["filter"], json!([]));
        assert_eq!(body["sort"][0]["@timestamp"]["order"], "desc");
        assert_eq!(body["sort"].as_array().unwrap().len(), SORT_LEN);
        assert!(body.get("search_after").is_none());
        // `_id` is not sortable on Elasticsearch 8 without a cluster setting.
        assert!(!body["sort"].to_string().contains("_id"));
    }

    #[test]
    fn every_filter_becomes_a_non_scoring_clause() {
        let f = EventFilter {
            database: Some("appdb".into()),
            table: Some("users".into()),
            op: Some(Op::Update),
            q: Some("alice@example.com".into()),
            since_ms: Some(1_700_000_000_000),
            until_ms: Some(1_700_000_060_000),
            ..filter()
        };
        let after = vec![json!(1), json!(2), json!(3), json!(0), json!(9)];
        let body = events_request(&f, Some(&after));
        assert_eq!(
            body["query"]["bool"]["filter"],
            json!([
                {"term": {"database": "appdb"}},
                {"term": {"table": "users"}},
                {"term": {"op": "update"}},
                {"range": {"@timestamp": {"format": "epoch_millis", "gte": 1_700_000_000_000i64, "lte": 1_700_000_060_000i64}}},
                {"simple_query_string": {"query": "alice@example.com", "fields": ["pk", "data", "old", "sql"], "default_operator": "and", "lenient": true, "flags": "AND|OR|NOT|PHRASE|PRECEDENCE|ESCAPE|WHITESPACE"}}
            ])
        );
        assert_eq!(body["search_after"], json!([1, 2, 3, 0, 9]));
    }

    #[test]
    fn blank_q_adds_no_clause() {
        let f = EventFilter {
            q: Some("  ".into()),
            ..filter()
        };
        assert_eq!(
            events_request(&f, None)["query"]["bool"]["filter"],
            json!([])
        );
    }

    fn hit(id: &str, ts: i64, commit_ts: &str) -> Value {
        // commit_ts above 2^53, as Elasticsearch returns unsigned_long sort values.
        let sort: Value =
            serde_json::from_str(&format!("[{ts},{commit_ts},{ts},0,{}]", id.len())).unwrap();
        json!({
            "_index": "cdc-events", "_id": id, "_score": null,
            "_source": {"@timestamp": "2023-11-14T22:13:20.000Z", "database": "appdb", "table": "users", "op": "insert", "pk": {"id": id}},
            "sort": sort
        })
    }

    fn reply(hits: Vec<Value>) -> SearchReply {
        let text = json!({
            "took": 3, "timed_out": false,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"max_score": null, "hits": hits}
        })
        .to_string();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_full_page_returns_ids_and_a_cursor_of_its_last_sort_values() {
        let r = reply(vec![
            hit("a", 3, "445318436578918403"),
            hit("b", 2, "445318436578918402"),
            hit("c", 1, "445318436578918401"),
        ]);
        let page = page_from_reply(r, 2).unwrap();
        assert_eq!(page.events.len(), 2);
        let first: Value = serde_json::from_str(page.events[0].get()).unwrap();
        assert_eq!(first["id"], "a");
        assert_eq!(first["pk"]["id"], "a");
        assert!(page.events[0].get().starts_with(r#"{"id":"a","#));
        let cursor = page.next_cursor.unwrap();
        let after = decode_cursor(&cursor).unwrap();
        // The unsigned_long sort value survives the round trip digit for digit.
        assert_eq!(
            serde_json::to_string(&after).unwrap(),
            "[2,445318436578918402,2,0,1]"
        );
        assert_eq!(
            events_request(&filter(), Some(&after))["search_after"].to_string(),
            "[2,445318436578918402,2,0,1]"
        );
    }

    #[test]
    fn the_last_page_has_no_cursor() {
        let page = page_from_reply(reply(vec![hit("a", 3, "1")]), 2).unwrap();
        assert_eq!(page.events.len(), 1);
        assert!(page.next_cursor.is_none());
        let empty = page_from_reply(reply(vec![]), 2).unwrap();
        assert!(empty.events.is_empty() && empty.next_cursor.is_none());
    }

    #[test]
    fn a_page_never_ends_inside_a_group_of_equal_sort_keys() {
        // b, c, d share a key (one transaction); the page of 3 stops after a.
        let r = reply(vec![
            hit("a", 3, "9"),
            hit("b", 2, "8"),
            hit("c", 2, "8"),
            hit("d", 2, "8"),
        ]);
        let page = page_from_reply(r, 3).unwrap();
        assert_eq!(page.events.len(), 1);
        let after = decode_cursor(&page.next_cursor.unwrap()).unwrap();
        assert_eq!(after[0], json!(3));
    }

    #[test]
    fn foreign_cursors_are_invalid_parameters() {
        for bad in ["%%%", "bm90IGpzb24", "WzEsMl0"] {
            match decode_cursor(bad) {
                Err(QueryError::Invalid { param, .. }) => assert_eq!(param, "cursor"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_rows_history_asks_for_its_key_values_oldest_first() {
        let pk = Row::from_values([("a", json!("1")), ("b", json!(null))]);
        let key = RowKey::of("appdb", "users", &pk, &pk);
        let values: Vec<Value> = serde_json::from_str(&key.values).unwrap();
        let body = history_request(&key, &values, 50);
        assert_eq!(body["size"], 50);
        let filter = body["query"]["bool"]["filter"].as_array().unwrap();
        assert_eq!(filter[0], json!({"term": {"database": "appdb"}}));
        assert_eq!(filter[1], json!({"term": {"table": "users"}}));
        // One clause for "1"; a null is no term (the post-filter checks it).
        assert_eq!(filter.len(), 3);
        assert_eq!(filter[2]["bool"]["should"][0], json!({"term": {"pk": "1"}}));
        assert_eq!(
            filter[2]["bool"]["should"][1]["bool"]["filter"],
            json!({"term": {"data": "1"}})
        );
        assert_eq!(body["sort"][0]["commit_ts"]["order"], "asc");
        assert_eq!(body["sort"][1]["@timestamp"]["order"], "asc");
    }

    #[test]
    fn a_rows_history_keeps_only_its_exact_key() {
        let doc = |id: &str, pk: Value, data: Value| {
            json!({"_index": "cdc-events", "_id": id, "_score": null, "sort": [1, 1],
                   "_source": {"database": "appdb", "table": "users", "op": "insert", "pk": pk, "data": data}})
        };
        let r = reply(vec![
            doc(
                "mine",
                json!({"a": "1", "b": "2"}),
                json!({"a": "1", "b": "2"}),
            ),
            // The same values under other columns: a term hit, not this row.
            doc(
                "swapped",
                json!({"a": "2", "b": "1"}),
                json!({"a": "2", "b": "1"}),
            ),
        ]);
        let pk = Row::from_values([("a", json!("1")), ("b", json!("2"))]);
        let key = RowKey::of("appdb", "users", &pk, &pk);
        let page = history_from_reply(r, &key).unwrap();
        assert_eq!(page.events.len(), 1);
        assert!(page.events[0].get().starts_with(r#"{"id":"mine","#));
        assert!(page.next_cursor.is_none());
        // A keyless table: the whole row is the key.
        let data = Row::from_values([("x", json!("7")), ("y", json!(null))]);
        let keyless = RowKey::of("appdb", "users", &Row::default(), &data);
        let r = reply(vec![doc("k", json!({}), json!({"x": "7", "y": null}))]);
        assert_eq!(history_from_reply(r, &keyless).unwrap().events.len(), 1);
    }

    #[test]
    fn stats_request_counts_by_op_and_table_and_histograms_recent_ingestion() {
        let body = stats_request(1_700_000_000_000, 10_000);
        assert_eq!(body["size"], 0);
        assert_eq!(body["track_total_hits"], true);
        assert_eq!(body["aggs"]["by_op"]["terms"]["field"], "op");
        assert_eq!(
            body["aggs"]["by_table"]["multi_terms"]["terms"],
            json!([{"field": "database"}, {"field": "table"}])
        );
        let recent = &body["aggs"]["recent"];
        assert_eq!(
            recent["filter"]["range"]["ingested_at"]["gte"],
            1_700_000_000_000i64
        );
        let hist = &recent["aggs"]["by_table"]["aggs"]["per_bucket"]["date_histogram"];
        assert_eq!(hist["field"], "ingested_at");
        assert_eq!(hist["fixed_interval"], "10000ms");
    }

    #[test]
    fn stats_reply_becomes_totals_and_zero_filled_rates() {
        // Shapes as documented for terms, multi_terms, filter and date_histogram.
        let text = json!({
            "took": 5, "timed_out": false,
            "hits": {"total": {"value": 42, "relation": "eq"}, "max_score": null, "hits": []},
            "aggregations": {
                "by_op": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0, "buckets": [
                    {"key": "insert", "doc_count": 30}, {"key": "update", "doc_count": 12}
                ]},
                "by_table": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0, "buckets": [
                    {"key": ["appdb", "users"], "key_as_string": "appdb|users", "doc_count": 40},
                    {"key": ["appdb", "orders"], "key_as_string": "appdb|orders", "doc_count": 2}
                ]},
                "recent": {"doc_count": 25, "by_table": {"buckets": [
                    {"key": ["appdb", "users"], "key_as_string": "appdb|users", "doc_count": 25, "per_bucket": {"buckets": [
                        {"key_as_string": "2023-11-14T22:13:30.000Z", "key": 1_700_000_010_000i64, "doc_count": 20},
                        {"key_as_string": "2023-11-14T22:13:50.000Z", "key": 1_700_000_030_000i64, "doc_count": 5}
                    ]}}
                ]}}
            }
        })
        .to_string();
        let r: SearchReply = serde_json::from_str(&text).unwrap();
        let s = stats_from_reply(r, 1_700_000_000_000, 1_700_000_035_000, 10_000).unwrap();
        assert_eq!(s.total, 42);
        assert_eq!(s.by_op["insert"], 30);
        assert_eq!(s.by_table["appdb.users"], 40);
        assert_eq!(s.bucket_seconds, 10);
        assert_eq!(s.rate.len(), 1);
        assert_eq!(s.rate[0].table, "appdb.users");
        assert_eq!(
            s.rate[0].points,
            vec![
                (1_700_000_000_000, 0.0),
                (1_700_000_010_000, 2.0),
                (1_700_000_020_000, 0.0),
                // In progress: 5 events in the 5 s elapsed.
                (1_700_000_030_000, 1.0)
            ]
        );
    }

    #[test]
    fn a_reply_without_indices_is_empty_stats() {
        let text = r#"{"took":0,"timed_out":false,"_shards":{"total":0,"successful":0,"skipped":0,"failed":0},"hits":{"total":{"value":0,"relation":"eq"},"max_score":0.0,"hits":[]}}"#;
        let r: SearchReply = serde_json::from_str(text).unwrap();
        let s = stats_from_reply(r, 0, 20_000, 10_000).unwrap();
        assert_eq!(s.total, 0);
        assert!(s.by_op.is_empty() && s.rate.is_empty());
    }
}
