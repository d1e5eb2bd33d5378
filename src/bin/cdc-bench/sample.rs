//! The canal-json messages the bench produces.

/// A canal-json INSERT like TiCDC writes for a small table.
pub fn message(id: u64, commit_ts: u64) -> String {
    format!(
        concat!(
            r#"{{"id":0,"database":"appdb","table":"users","pkNames":["id"],"isDdl":false,"type":"INSERT","#,
            r#""es":{es},"ts":{es},"sql":"","sqlType":{{"id":-5,"username":12,"email":12,"created_at":93}},"#,
            r#""mysqlType":{{"id":"bigint","username":"varchar","email":"varchar","created_at":"timestamp"}},"#,
            r#""old":null,"data":[{{"id":"{id}","username":"user{id}","email":"user{id}@example.com","created_at":"2024-01-01 00:00:00"}}],"#,
            r#""_tidb":{{"commitTs":{ts}}}}}"#
        ),
        id = id,
        ts = commit_ts,
        es = commit_ts >> 18
    )
}

/// A canal-json INSERT into a table with one wide text column, `wide`.
pub fn large_message(id: u64, commit_ts: u64, wide: &str) -> String {
    format!(
        concat!(
            r#"{{"id":0,"database":"appdb","table":"docs","pkNames":["id"],"isDdl":false,"type":"INSERT","#,
            r#""es":{es},"ts":{es},"sql":"","sqlType":{{"id":-5,"body":-1}},"mysqlType":{{"id":"bigint","body":"longtext"}},"#,
            r#""old":null,"data":[{{"id":"{id}","body":"{wide}"}}],"_tidb":{{"commitTs":{ts}}}}}"#
        ),
        id = id,
        ts = commit_ts,
        es = commit_ts >> 18,
        wide = wide
    )
}

/// The commit ts of the first generated message (2023-10-31, UTC).
pub const BASE_TS: u64 = 445_318_436_315_725_826;

/// A TiDB commit ts for now: the physical milliseconds above 18 logical bits.
pub fn now_ts() -> u64 {
    (crate::now_millis() as u64) << 18
}
