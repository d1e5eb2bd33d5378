//! Checks, before reading, that the server can be captured: binary log on,
//! row format with full images, and the privileges a replica needs. Every
//! problem is reported at once, each with the statement that fixes it.

use mysql_async::prelude::Queryable;

use crate::config::TableFilter;

/// What the server is and where its binlog stands.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub mariadb: bool,
    /// TiDB (`VERSION()` names it): no binlog, reads `AS OF TIMESTAMP`.
    pub tidb: bool,
    /// `binlog_row_metadata=FULL`: column names travel in the binlog.
    pub full_metadata: bool,
}

impl ServerInfo {
    /// What `version` (`SELECT VERSION()`) says the server is.
    pub fn from_version(version: String, full_metadata: bool) -> ServerInfo {
        let lower = version.to_ascii_lowercase();
        ServerInfo {
            mariadb: lower.contains("mariadb"),
            tidb: lower.contains("tidb"),
            version,
            full_metadata,
        }
    }
}

/// The server's version and row metadata setting, without checking
/// anything binlog capture needs: for reading tables only (`reconcile`
/// through the Kafka source, where the server may be TiDB).
pub async fn describe(conn: &mut mysql_async::Conn) -> Result<ServerInfo, mysql_async::Error> {
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await?
        .unwrap_or_default();
    let metadata: Option<(String, String)> = conn
        .query_first("SHOW GLOBAL VARIABLES LIKE 'binlog_row_metadata'")
        .await?;
    let full = metadata.is_some_and(|(_, v)| v.eq_ignore_ascii_case("FULL"));
    Ok(ServerInfo::from_version(version, full))
}

/// One thing that keeps capture from working, and its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// The privileges a capture user needs, as `GRANT` names them, and what else satisfies each.
const NEEDED: [(&str, &[&str]); 3] = [
    ("REPLICATION SLAVE", &["REPLICATION SLAVE"]),
    // MariaDB 10.5 renamed REPLICATION CLIENT to BINLOG MONITOR; SUPER implied it before.
    (
        "REPLICATION CLIENT",
        &["REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"],
    ),
    ("SELECT", &["SELECT"]),
];

/// Which of the needed privileges `grants` (the lines of `SHOW GRANTS`) lacks.
/// SELECT counts when granted on `*.*` or on every database the filter names.
pub fn missing_privileges(grants: &[String], tables: &TableFilter) -> Vec<&'static str> {
    let parsed: Vec<(String, String)> = grants
        .iter()
        .filter_map(|g| {
            let upper = g.to_ascii_uppercase();
            let rest = upper.strip_prefix("GRANT ")?;
            let (privs, on) = rest.split_once(" ON ")?;
            let target = on.split(" TO ").next()?.trim().replace('`', "");
            Some((privs.to_owned(), target))
        })
        .collect();
    let has = |names: &[&str], target_ok: &dyn Fn(&str) -> bool| {
        parsed.iter().any(|(privs, target)| {
            target_ok(target)
                && (privs.contains("ALL PRIVILEGES")
                    || privs.split(',').map(str::trim).any(|p| names.contains(&p)))
        })
    };
    let global = |t: &str| t == "*.*";
    let mut missing = Vec::new();
    for (name, satisfied_by) in NEEDED {
        let ok = if name == "SELECT" {
            has(satisfied_by, &global)
                || (!tables.include.is_empty()
                    && tables.include.iter().all(|p| {
                        !p.database.contains('*')
                            && has(satisfied_by, &|t: &str| {
                                t == format!("{}.*", p.database.to_ascii_uppercase())
                            })
                    }))
        } else {
            has(satisfied_by, &global)
        };
        if !ok {
            missing.push(name);
        }
    }
    missing
}

/// Reads the server's settings and grants and lists every problem.
pub async fn check(
    conn: &mut mysql_async::Conn,
    tables: &TableFilter,
) -> Result<(ServerInfo, Vec<Problem>), mysql_async::Error> {
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await?
        .unwrap_or_default();
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let var = |name: &'static str| format!("SHOW GLOBAL VARIABLES LIKE '{name}'");
    let mut vars = std::collections::HashMap::new();
    for name in [
        "log_bin",
        "binlog_format",
        "binlog_row_image",
        "binlog_row_metadata",
        "log_bin_compress",
    ] {
        let row: Option<(String, String)> = conn.query_first(var(name)).await?;
        if let Some((_, v)) = row {
            vars.insert(name, v.to_ascii_uppercase());
        }
    }
    let mut problems = Vec::new();
    let cnf = if mariadb {
        "my.cnf [mariadbd]"
    } else {
        "my.cnf [mysqld]"
    };
    if vars.get("log_bin").map(String::as_str) != Some("ON") {
        problems.push(Problem {
            what: "binary logging is off (log_bin=OFF)".into(),
            fix: format!(
                "start the server with --log-bin (in {cnf}: log_bin = binlog) and a server_id"
            ),
        });
    }
    if let Some(f) = vars.get("binlog_format").filter(|f| *f != "ROW") {
        problems.push(Problem {
            what: format!("binlog_format is {f}, row events are needed"),
            fix: format!("SET GLOBAL binlog_format = 'ROW'; and in {cnf}: binlog_format = ROW"),
        });
    }
    if let Some(f) = vars.get("binlog_row_image").filter(|f| *f != "FULL") {
        problems.push(Problem {
            what: format!(
                "binlog_row_image is {f}: rows would lack unchanged columns and old values"
            ),
            fix: format!(
                "SET GLOBAL binlog_row_image = 'FULL'; and in {cnf}: binlog_row_image = FULL"
            ),
        });
    }
    if vars.get("log_bin_compress").map(String::as_str) == Some("ON") {
        problems.push(Problem {
            what: "log_bin_compress is ON: compressed row events cannot be read".into(),
            fix: format!("SET GLOBAL log_bin_compress = OFF; and in {cnf}: log_bin_compress = OFF"),
        });
    }
    let full_metadata = vars.get("binlog_row_metadata").map(String::as_str) == Some("FULL");

    let grants: Vec<String> = conn.query("SHOW GRANTS FOR CURRENT_USER()").await?;
    let missing = missing_privileges(&grants, tables);
    if !missing.is_empty() {
        let user: String = conn
            .query_first("SELECT CURRENT_USER()")
            .await?
            .unwrap_or_default();
        let account = match user.rsplit_once('@') {
            Some((u, h)) => format!("'{u}'@'{h}'"),
            None => format!("'{user}'"),
        };
        problems.push(Problem {
            what: format!("user {account} lacks {}", missing.join(", ")),
            fix: format!("GRANT {} ON *.* TO {account};", missing.join(", ")),
        });
    }
    Ok((ServerInfo::from_version(version, full_metadata), problems))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TablePattern;

    fn filter(pattern: &str) -> TableFilter {
        TableFilter {
            include: vec![TablePattern::parse(pattern).unwrap()],
            exclude: vec![],
        }
    }

    fn grants(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grants_are_matched_by_name_and_scope() {
        let all = grants(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"]);
        assert!(missing_privileges(&all, &filter("*.*")).is_empty());
        let cdc = grants(&[
            "GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `cdc`@`%` IDENTIFIED BY PASSWORD '*X'",
        ]);
        assert!(missing_privileges(&cdc, &filter("appdb.*")).is_empty());
        let usage = grants(&[
            "GRANT USAGE ON *.* TO `app`@`%`",
            "GRANT ALL PRIVILEGES ON `appdb`.* TO `app`@`%`",
        ]);
        assert_eq!(
            missing_privileges(&usage, &filter("appdb.*")),
            ["REPLICATION SLAVE", "REPLICATION CLIENT"]
        );
        assert_eq!(
            missing_privileges(&usage, &filter("*.*")),
            ["REPLICATION SLAVE", "REPLICATION CLIENT", "SELECT"]
        );
    }
}
