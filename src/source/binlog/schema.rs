//! Column names, types and primary keys of captured tables.
//!
//! The binlog's table map carries them when the server writes full row
//! metadata (`binlog_row_metadata=FULL`, MySQL 8.0.1+ and MariaDB 10.5+):
//! that describes the table as it was when the change was made, so it is
//! preferred. Otherwise they come from `information_schema`, cached per
//! table and dropped after any DDL on its database.

use std::collections::HashMap;
use std::sync::Arc;

use mysql_async::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;

use crate::source::binlog::charset::{Charset, Collations};

/// The charset id MySQL uses for binary strings.
pub const BINARY_CHARSET: u16 = 63;

/// One column, as far as turning its binlog value into text needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// The type as `information_schema.COLUMNS.DATA_TYPE` names it (`int`, `varchar`, ...),
    /// with ` unsigned` for unsigned numbers.
    pub mysql_type: String,
    pub unsigned: bool,
    /// The character set of a string column (`Binary` for binary strings);
    /// `None` for every other type.
    pub charset: Option<Charset>,
    /// BINARY(n): n. The binlog drops a BINARY value's trailing 0x00 bytes
    /// and the server shows them, so they are put back up to this length.
    pub pad_to: usize,
    /// Member names of an ENUM or SET, in definition order.
    pub members: Vec<String>,
}

/// The declared length of a CHAR/BINARY column from its table-map metadata
/// (the same arithmetic as the server's `Field_string` and mysql_common).
fn string_length(meta: &[u8]) -> usize {
    match meta {
        [b0, b1, ..] if (b0 & 0x30) != 0x30 => {
            usize::from(*b1) | ((usize::from(b0 & 0x30) ^ 0x30) << 4)
        }
        [_, b1, ..] => usize::from(*b1),
        _ => 0,
    }
}

/// A captured table's columns and primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub database: String,
    pub table: String,
    pub columns: Vec<ColumnInfo>,
    /// Indexes into `columns`, in key order. Empty: the table has no primary key.
    pub primary_key: Vec<usize>,
}

/// The DATA_TYPE name of a binlog column type.
fn type_name(t: ColumnType, binary: bool, meta: &[u8]) -> &'static str {
    use ColumnType::*;
    match t {
        MYSQL_TYPE_TINY => "tinyint",
        MYSQL_TYPE_SHORT => "smallint",
        MYSQL_TYPE_INT24 => "mediumint",
        MYSQL_TYPE_LONG => "int",
        MYSQL_TYPE_LONGLONG => "bigint",
        MYSQL_TYPE_FLOAT => "float",
        MYSQL_TYPE_DOUBLE => "double",
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => "decimal",
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => "date",
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => "datetime",
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => "timestamp",
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => "time",
        MYSQL_TYPE_YEAR => "year",
        MYSQL_TYPE_BIT => "bit",
        MYSQL_TYPE_JSON => "json",
        MYSQL_TYPE_ENUM => "enum",
        MYSQL_TYPE_SET => "set",
        MYSQL_TYPE_GEOMETRY => "geometry",
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if binary => "varbinary",
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => "varchar",
        MYSQL_TYPE_STRING if binary => "binary",
        MYSQL_TYPE_STRING => "char",
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            // The length-prefix size tells TINY (1), plain (2), MEDIUM (3), LONG (4).
            let size = meta.first().copied().unwrap_or(2);
            match (binary, size) {
                (true, 1) => "tinyblob",
                (true, 3) => "mediumblob",
                (true, 4) => "longblob",
                (true, _) => "blob",
                (false, 1) => "tinytext",
                (false, 3) => "mediumtext",
                (false, 4) => "longtext",
                (false, _) => "text",
            }
        }
        _ => "unknown",
    }
}

impl TableSchema {
    /// Takes MariaDB's INET4, INET6 and UUID type names from `named` (the
    /// table as information_schema describes it) for BINARY columns of the
    /// same name.
    pub fn name_binary_types(&mut self, named: &TableSchema) {
        for c in self.columns.iter_mut().filter(|c| c.pad_to > 0) {
            if let Some(n) = named.columns.iter().find(|n| n.name == c.name) {
                if is_fixed_binary_type(&n.mysql_type) {
                    c.mysql_type.clone_from(&n.mysql_type);
                }
            }
        }
    }
    /// From the table map's optional metadata; `None` when it has no column
    /// names. `collations` resolves the collation ids it carries; `mariadb`:
    /// the server is MariaDB, whose charset list also has an entry for each
    /// GEOMETRY column (a BLOB underneath), where MySQL's has none.
    pub fn from_table_map(
        tme: &TableMapEvent<'_>,
        collations: &Collations,
        mariadb: bool,
    ) -> Option<TableSchema> {
        let n = tme.columns_count() as usize;
        let mut names = Vec::new();
        let mut signedness = Vec::new();
        let mut charsets: Vec<u16> = Vec::new();
        let mut default_charset: Option<(u16, Vec<(u64, u16)>)> = None;
        let mut enum_set_charsets: Vec<u16> = Vec::new();
        let mut enum_set_default: Option<(u16, Vec<(u64, u16)>)> = None;
        let mut enum_members: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut set_members: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut primary_key = Vec::new();
        for field in tme.iter_optional_meta() {
            match field.ok()? {
                OptionalMetadataField::ColumnName(c) => {
                    for name in c.iter_names() {
                        names.push(name.ok()?.name().into_owned());
                    }
                }
                OptionalMetadataField::Signedness(bits) => {
                    signedness = bits.iter().map(|b| *b).collect();
                }
                OptionalMetadataField::DefaultCharset(d) => {
                    default_charset = Some(default_and_overrides(&d)?);
                }
                OptionalMetadataField::ColumnCharset(c) => {
                    for cs in c.iter_charsets() {
                        charsets.push(cs.ok()?);
                    }
                }
                OptionalMetadataField::EnumAndSetDefaultCharset(d) => {
                    enum_set_default = Some(default_and_overrides(&d)?);
                }
                OptionalMetadataField::EnumAndSetColumnCharset(c) => {
                    for cs in c.iter_charsets() {
                        enum_set_charsets.push(cs.ok()?);
                    }
                }
                OptionalMetadataField::EnumStrValue(e) => {
                    for values in e.iter_values() {
                        let values = values.ok()?;
                        enum_members.push(
                            values
                                .values()
                                .iter()
                                .map(|v| v.value_raw().to_vec())
                                .collect(),
                        );
                    }
                }
                OptionalMetadataField::SetStrValue(e) => {
                    for values in e.iter_values() {
                        let values = values.ok()?;
                        set_members.push(
                            values
                                .values()
                                .iter()
                                .map(|v| v.value_raw().to_vec())
                                .collect(),
                        );
                    }
                }
                OptionalMetadataField::SimplePrimaryKey(k) => {
                    for i in k.iter_indexes() {
                        primary_key.push(i.ok()? as usize);
                    }
                }
                OptionalMetadataField::PrimaryKeyWithPrefix(k) => {
                    for key in k.iter_keys() {
                        primary_key.push(key.ok()?.column_index() as usize);
                    }
                }
                _ => {}
            }
        }
        if names.len() != n {
            return None;
        }
        let (mut numeric, mut character, mut enums, mut sets) = (0, 0, 0, 0);
        let mut columns = Vec::with_capacity(n);
        for (i, name) in names.into_iter().enumerate() {
            let t = tme.get_column_type(i).ok()??;
            let meta = tme.get_column_metadata(i).unwrap_or(&[]);
            let mut unsigned = false;
            let mut charset = None;
            let mut members = Vec::new();
            if t.is_numeric_type() {
                unsigned = signedness.get(numeric).copied().unwrap_or(false);
                numeric += 1;
            }
            if t.is_character_type() {
                let id = nth_charset(&default_charset, &charsets, character);
                charset = Some(collations.charset(id));
                character += 1;
            } else if mariadb && t == ColumnType::MYSQL_TYPE_GEOMETRY {
                // Binary; `convert` writes it by type.
                character += 1;
            }
            if t.is_enum_or_set_type() {
                let ordinal = enums + sets;
                let cs =
                    collations.charset(nth_charset(&enum_set_default, &enum_set_charsets, ordinal));
                let raw = if t == ColumnType::MYSQL_TYPE_ENUM {
                    enums += 1;
                    enum_members.get(enums - 1)
                } else {
                    sets += 1;
                    set_members.get(sets - 1)
                };
                // Member names are text of the column's character set.
                members = raw
                    .map(|m| {
                        m.iter()
                            .map(|b| {
                                cs.decode(b)
                                    .unwrap_or_else(|_| String::from_utf8_lossy(b).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            }
            let binary = charset == Some(Charset::Binary);
            let pad_to = if t == ColumnType::MYSQL_TYPE_STRING && binary {
                string_length(meta)
            } else {
                0
            };
            let base = type_name(t, binary, meta);
            columns.push(ColumnInfo {
                name,
                mysql_type: if unsigned {
                    format!("{base} unsigned")
                } else {
                    base.to_owned()
                },
                unsigned,
                charset,
                pad_to,
                members,
            });
        }
        Some(TableSchema {
            database: tme.database_name().into_owned(),
            table: tme.table_name().into_owned(),
            columns,
            primary_key,
        })
    }
}

/// The default collation and the per-column exceptions of a DEFAULT_CHARSET field.
fn default_and_overrides(
    d: &mysql_async::binlog::events::DefaultCharset<'_>,
) -> Option<(u16, Vec<(u64, u16)>)> {
    let mut non_default = Vec::new();
    for c in d.iter_non_default() {
        let c = c.ok()?;
        non_default.push((c.column_index(), c.charset()));
    }
    Some((d.default_charset(), non_default))
}

/// The collation id of the `k`-th column of a kind, from a DEFAULT_CHARSET
/// field when the table map has one, else from the per-column list.
fn nth_charset(default: &Option<(u16, Vec<(u64, u16)>)>, per_column: &[u16], k: usize) -> u16 {
    match default {
        Some((default, overrides)) => overrides
            .iter()
            .find(|(idx, _)| *idx as usize == k)
            .map_or(*default, |(_, cs)| *cs),
        None => per_column.get(k).copied().unwrap_or(0),
    }
}

/// Parses the member list of `enum('a','b')` / `set('x','y')` from COLUMN_TYPE.
pub fn parse_members(column_type: &str) -> Vec<String> {
    let Some(inner) = column_type
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map(|(inner, _)| inner)
    else {
        return Vec::new();
    };
    let mut members = Vec::new();
    let mut cur = String::new();
    let mut chars = inner.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '\'') => quoted = true,
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            (true, '\'') => {
                quoted = false;
                members.push(std::mem::take(&mut cur));
            }
            (true, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (true, c) => cur.push(c),
            (false, _) => {}
        }
    }
    members
}

/// COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, CHARACTER_OCTET_LENGTH.
type InformationSchemaColumn = (String, String, String, Option<String>, Option<u64>);

/// MariaDB's fixed-size binary types with a text form of their own.
pub fn is_fixed_binary_type(data_type: &str) -> bool {
    matches!(data_type, "inet4" | "inet6" | "uuid")
}

/// One `information_schema.COLUMNS` row as a column.
fn column_from_information_schema(
    name: String,
    data_type: &str,
    column_type: &str,
    charset: Option<String>,
    octets: Option<u64>,
) -> ColumnInfo {
    let data_type = data_type.to_ascii_lowercase();
    let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
    let string = matches!(
        data_type.as_str(),
        "char"
            | "varchar"
            | "tinytext"
            | "text"
            | "mediumtext"
            | "longtext"
            | "json"
            | "binary"
            | "varbinary"
            | "tinyblob"
            | "blob"
            | "mediumblob"
            | "longblob"
    );
    let charset = match charset {
        Some(name) => Some(Charset::from_name(&name)),
        // Binary strings have no character set here.
        None if string => Some(Charset::Binary),
        None => None,
    };
    let pad_to = match (data_type.as_str(), octets) {
        ("binary", Some(n)) => usize::try_from(n).unwrap_or(0),
        ("inet4", _) => 4,
        ("inet6" | "uuid", _) => 16,
        _ => 0,
    };
    let members = if matches!(data_type.as_str(), "enum" | "set") {
        parse_members(column_type)
    } else {
        Vec::new()
    };
    ColumnInfo {
        name,
        mysql_type: if unsigned {
            format!("{data_type} unsigned")
        } else {
            data_type
        },
        unsigned,
        charset,
        pad_to,
        members,
    }
}

/// Table schemas read from `information_schema`, cached until DDL.
#[derive(Default)]
pub struct SchemaCache {
    tables: HashMap<(String, String), Arc<TableSchema>>,
    collations: Option<Collations>,
    /// The server is MariaDB (its table maps differ, see `from_table_map`).
    pub mariadb: bool,
}

impl SchemaCache {
    /// An empty cache for a MariaDB (`true`) or MySQL server.
    pub fn new(mariadb: bool) -> SchemaCache {
        SchemaCache {
            mariadb,
            ..SchemaCache::default()
        }
    }

    /// The server's collation ids, read once per connection.
    pub async fn collations(
        &mut self,
        conn: &mut mysql_async::Conn,
    ) -> Result<&Collations, mysql_async::Error> {
        if self.collations.is_none() {
            // MariaDB lists some collations without an id or a character set.
            let rows: Vec<(Option<u16>, Option<String>)> = conn
                .query("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS")
                .await?;
            self.collations = Some(Collations::new(
                rows.into_iter().filter_map(|(id, name)| Some((id?, name?))),
            ));
        }
        Ok(self.collations.get_or_insert_with(Collations::default))
    }

    /// Forgets every cached table of `database` (all when `None`).
    pub fn invalidate(&mut self, database: Option<&str>) {
        match database {
            Some(db) => self.tables.retain(|(d, _), _| d != db),
            None => self.tables.clear(),
        }
    }

    /// The table's current schema from `information_schema`.
    pub async fn load(
        &mut self,
        conn: &mut mysql_async::Conn,
        database: &str,
        table: &str,
    ) -> Result<Arc<TableSchema>, mysql_async::Error> {
        let key = (database.to_owned(), table.to_owned());
        if let Some(s) = self.tables.get(&key) {
            return Ok(s.clone());
        }
        let rows: Vec<InformationSchemaColumn> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, \
                 CHARACTER_OCTET_LENGTH \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                 ORDER BY ORDINAL_POSITION",
                (database, table),
            )
            .await?;
        let pk: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' \
                 ORDER BY SEQ_IN_INDEX",
                (database, table),
            )
            .await?;
        let columns: Vec<ColumnInfo> = rows
            .into_iter()
            .map(|(name, data_type, column_type, charset, octets)| {
                column_from_information_schema(name, &data_type, &column_type, charset, octets)
            })
            .collect();
        let primary_key = pk
            .iter()
            .filter_map(|p| columns.iter().position(|c| &c.name == p))
            .collect();
        let schema = Arc::new(TableSchema {
            database: database.to_owned(),
            table: table.to_owned(),
            columns,
            primary_key,
        });
        self.tables.insert(key, schema.clone());
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_members_parse_with_quotes_and_commas() {
        assert_eq!(
            parse_members("enum('new','it''s','a,b')"),
            ["new", "it's", "a,b"]
        );
        assert_eq!(parse_members("set('x','y')"), ["x", "y"]);
        assert!(parse_members("int(11)").is_empty());
    }

    #[test]
    fn information_schema_gives_charsets_and_binary_lengths() {
        let c = |t: &str, ct: &str, cs: Option<&str>, n| {
            column_from_information_schema("c".into(), t, ct, cs.map(str::to_owned), n)
        };
        let bin = c("binary", "binary(16)", None, Some(16));
        assert_eq!((bin.charset, bin.pad_to), (Some(Charset::Binary), 16));
        let text = c("varchar", "varchar(10)", Some("latin1"), Some(10));
        assert_eq!(text.charset, Some(Charset::from_name("latin1")));
        assert_eq!(text.pad_to, 0);
        assert_eq!(c("int", "int(10) unsigned", None, None).charset, None);
        assert!(c("mediumint", "mediumint(8) unsigned", None, None).unsigned);
    }

    #[test]
    fn char_lengths_come_from_the_table_map_metadata() {
        // BINARY(16): real type 0xfe, length 16.
        assert_eq!(string_length(&[0xfe, 16]), 16);
        // CHAR(255) in utf8mb4 (1020 bytes): the high bits ride in byte 0.
        assert_eq!(string_length(&[0xce, 0xfc]), 1020);
    }
}
