//! Column masking: the values of configured columns are replaced by a keyed
//! hash before any sink sees them, so equal values still look equal but the
//! value itself is not stored, indexed, produced or served.
//!
//! A masked value is the JSON string `"hmac:"` + the lower-case hex of
//! HMAC-SHA256(key, value), where the value is the column's text (a JSON
//! string's contents, else its JSON text). NULL stays NULL. The hash does
//! not depend on the table or the column, so one value hashes alike
//! wherever it appears, and document ids derived from masked primary keys
//! stay deterministic as long as the key does.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::config::{ColumnPattern, MaskConfig, MASK_KEY_MIN_BYTES};
use crate::event::ChangeEvent;
use crate::owner_only;

/// The prefix of every masked value.
pub const PREFIX: &str = "hmac:";

/// The generated key's file in the data directory.
pub const KEY_FILE: &str = "mask.key";

/// Why masking could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("cannot read or create the masking key {path}: {error}")]
    KeyFile { path: PathBuf, error: io::Error },
    #[error(
        "the masking key {path} holds fewer than {MASK_KEY_MIN_BYTES} bytes: restore it, \
         set CDC_MASK_KEY, or delete it to generate a new one (masked values then hash differently)"
    )]
    ShortKeyFile { path: PathBuf },
}

/// Replaces the values of matching columns with their keyed hash.
pub struct Masker {
    patterns: Vec<ColumnPattern>,
    /// Keyed once; each value hashes with a clone, which skips re-keying.
    mac: Hmac<Sha256>,
    /// Which columns of the last table matched: the patterns are tried once
    /// per column name, not for every column of every event.
    cache: Mutex<ColumnCache>,
}

impl Clone for Masker {
    fn clone(&self) -> Masker {
        Masker {
            patterns: self.patterns.clone(),
            mac: self.mac.clone(),
            cache: Mutex::default(),
        }
    }
}

/// The masking decisions for the columns of one table.
#[derive(Default)]
struct ColumnCache {
    /// `(database, table)`; `None` before the first event.
    table: Option<(Box<str>, Box<str>)>,
    /// Some pattern names this table.
    any_pattern: bool,
    /// Column name and whether it is masked, in the order first seen.
    columns: Vec<(Box<str>, bool)>,
}

impl ColumnCache {
    fn is_for(&self, database: &str, table: &str) -> bool {
        self.table
            .as_ref()
            .is_some_and(|(d, t)| d.as_ref() == database && t.as_ref() == table)
    }

    /// The decision for `name`, the `i`th column of its row: rows of a
    /// table list their columns in one order, so position `i` is tried first.
    fn lookup(&self, i: usize, name: &str) -> Option<bool> {
        match self.columns.get(i) {
            Some((n, masked)) if n.as_ref() == name => Some(*masked),
            _ => self
                .columns
                .iter()
                .find(|(n, _)| n.as_ref() == name)
                .map(|(_, masked)| *masked),
        }
    }
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Masker")
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// The configured masker, `None` when no column is masked. Without a
    /// configured key, the one in `DATA_DIR/mask.key` is used, generated
    /// (0600) on the first start.
    pub fn build(cfg: &MaskConfig, data_dir: &Path) -> Result<Option<Masker>, MaskError> {
        if cfg.columns.is_empty() {
            return Ok(None);
        }
        let masker = match &cfg.key {
            Some(key) => Masker::new(cfg.columns.clone(), key.expose_secret().as_bytes()),
            None => Masker::new(cfg.columns.clone(), &stored_key(data_dir)?),
        };
        Ok(Some(masker))
    }

    /// A masker of `patterns` with `key`.
    pub fn new(patterns: Vec<ColumnPattern>, key: &[u8]) -> Masker {
        Masker {
            patterns,
            // HMAC takes a key of any length.
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length"),
            cache: Mutex::default(),
        }
    }

    /// The masked text of `value`: `hmac:` and 64 hex digits.
    pub fn hash(&self, value: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(PREFIX.len() + 2 * digest.len());
        out.push_str(PREFIX);
        for b in digest {
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
        out
    }

    /// Masks the matching columns of `event`'s `data`, `old` and `pk`.
    pub fn mask_event(&self, event: &mut ChangeEvent) {
        // A poisoned cache is only a cache: start it again.
        let mut cache = self.cache.lock().unwrap_or_else(|p| {
            let mut c = p.into_inner();
            *c = ColumnCache::default();
            c
        });
        if !cache.is_for(&event.database, &event.table) {
            *cache = ColumnCache {
                table: Some((event.database.as_str().into(), event.table.as_str().into())),
                any_pattern: self
                    .patterns
                    .iter()
                    .any(|p| p.matches_table(&event.database, &event.table)),
                columns: Vec::new(),
            };
        }
        if !cache.any_pattern {
            return;
        }
        let rows = [
            Some(&mut event.data),
            Some(&mut event.pk),
            event.old.as_mut(),
        ];
        for row in rows.into_iter().flatten() {
            for (i, (name, value)) in row.0.iter_mut().enumerate() {
                if value.get() == "null" {
                    continue;
                }
                let masked = match cache.lookup(i, name) {
                    Some(masked) => masked,
                    None => {
                        let column = lowercase(name);
                        let masked = self.patterns.iter().any(|p| {
                            p.matches_table(&event.database, &event.table)
                                && p.matches_column(&column)
                        });
                        cache.columns.push((name.clone(), masked));
                        masked
                    }
                };
                if masked {
                    *value = self.masked_value(value);
                }
            }
        }
    }

    fn masked_value(&self, value: &RawValue) -> Box<RawValue> {
        let raw = value.get();
        let text: Cow<'_, str> = match serde_json::from_str::<String>(raw) {
            Ok(s) => Cow::Owned(s),
            Err(_) => Cow::Borrowed(raw),
        };
        let hashed = format!("\"{}\"", self.hash(text.as_bytes()));
        // `hmac:` and hex digits in quotes: a JSON string with nothing to escape.
        RawValue::from_string(hashed).expect("a quoted hex digest is valid JSON")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `name` lower-cased, borrowed when it already is.
fn lowercase(name: &str) -> Cow<'_, str> {
    if name.chars().any(|c| c.is_uppercase()) {
        Cow::Owned(name.to_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The key kept in `data_dir`: its text, as `CDC_MASK_KEY_FILE` would read
/// it (pointing that variable at the file keeps the same hashes). A missing
/// file is generated: 32 random bytes as hex, written 0600 to a file of
/// this process's own and linked into place, so a crash never leaves half a
/// key behind and of two processes starting at once, both use the first's.
fn stored_key(data_dir: &Path) -> Result<Vec<u8>, MaskError> {
    let path = data_dir.join(KEY_FILE);
    let err = |error| MaskError::KeyFile {
        path: path.clone(),
        error,
    };
    if let Some(key) = read_key(&path)? {
        return Ok(key);
    }
    owner_only::create_dir_all(data_dir).map_err(err)?;
    let mut bytes = [0u8; 32];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut bytes);
    let key: String = bytes
        .iter()
        .flat_map(|b| {
            [
                HEX[(b >> 4) as usize] as char,
                HEX[(b & 0xf) as usize] as char,
            ]
        })
        .collect();
    static ATTEMPT: AtomicU64 = AtomicU64::new(0);
    let attempt = ATTEMPT.fetch_add(1, Ordering::Relaxed);
    let tmp = data_dir.join(format!("{KEY_FILE}.{}.{attempt}.tmp", std::process::id()));
    let written = owner_only::create(&tmp).and_then(|mut f| {
        f.write_all(key.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    });
    // Fails if another process put its key there first: that one wins.
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key.into_bytes()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            read_key(&path)?.ok_or_else(|| err(e))
        }
        Err(e) => Err(err(e)),
    }
}

/// The key in `path`, `None` when there is no such file.
fn read_key(path: &Path) -> Result<Option<Vec<u8>>, MaskError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = text.trim_end_matches(['\n', '\r']);
            if key.trim().len() < MASK_KEY_MIN_BYTES {
                return Err(MaskError::ShortKeyFile {
                    path: path.to_owned(),
                });
            }
            Ok(Some(key.as_bytes().to_vec()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(MaskError::KeyFile {
            path: path.to_owned(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::json;

    use super::*;
    use crate::config::ColumnPattern;
    use crate::event::{Op, Row};

    const DEFAULT: &str = "*.*.*password*,*.*.*passwd*,*.*.*secret*,*.*.*token*";

    fn patterns(list: &str) -> Vec<ColumnPattern> {
        list.split(',')
            .map(|p| ColumnPattern::parse(p).unwrap())
            .collect()
    }

    fn event(data: &[(&str, serde_json::Value)]) -> ChangeEvent {
        let row = || Row::from_values(data.iter().map(|(k, v)| (*k, v.clone())));
        ChangeEvent::row(
            "appdb",
            "users",
            Op::Update,
            Row::from_values([("id", data[0].1.clone())]),
            row(),
            Some(row()),
            1_700_000_000_000,
        )
    }

    #[test]
    fn decisions_follow_the_table_and_the_column_whatever_came_before() {
        let m = Masker::new(
            patterns("appdb.users.code,shop.*.note"),
            b"0123456789abcdef",
        );
        let masked = |e: &ChangeEvent, col: &str| e.data.text(col).unwrap().starts_with(PREFIX);
        for round in 0..2 {
            let mut users = event(&[("id", json!(1)), ("code", json!("x")), ("note", json!("y"))]);
            m.mask_event(&mut users);
            assert!(
                masked(&users, "code") && !masked(&users, "note"),
                "round {round}"
            );
            // Another table, and the columns in another order.
            let mut orders = event(&[("note", json!("y")), ("id", json!(2)), ("code", json!("x"))]);
            orders.database = "shop".into();
            orders.table = "orders".into();
            m.mask_event(&mut orders);
            assert!(
                masked(&orders, "note") && !masked(&orders, "code"),
                "round {round}"
            );
            let mut reordered = event(&[("code", json!("x")), ("note", json!("y"))]);
            m.mask_event(&mut reordered);
            assert!(masked(&reordered, "code") && !masked(&reordered, "note"));
            // Its key column `id` (the pk row, another order) is not masked.
            assert!(!reordered.pk.text("id").unwrap().starts_with(PREFIX));
        }
    }

    #[test]
    fn the_default_list_masks_password_passwd_secret_and_token_columns_in_any_case() {
        let m = Masker::new(patterns(DEFAULT), b"0123456789abcdef");
        let mut e = event(&[
            ("id", json!(1)),
            ("Password_Hash", json!("hunter2")),
            ("db_passwd", json!("a")),
            ("CLIENT_SECRET", json!("b")),
            ("api_token", json!("c")),
            ("email", json!("alice@example.com")),
            ("password", serde_json::Value::Null),
        ]);
        m.mask_event(&mut e);
        for col in ["Password_Hash", "db_passwd", "CLIENT_SECRET", "api_token"] {
            let v = e.data.text(col).unwrap();
            assert!(v.starts_with(PREFIX) && v.len() == 69, "{col}: {v}");
            assert_eq!(e.old.as_ref().unwrap().text(col).unwrap(), v);
        }
        assert_eq!(e.data.text("email").unwrap(), "alice@example.com");
        assert_eq!(e.data.get("password").unwrap().get(), "null");
        assert_eq!(e.data.text("id").unwrap(), "1");
        assert_eq!(e.pk.text("id").unwrap(), "1");
    }

    #[test]
    fn patterns_name_databases_tables_and_columns_with_wildcards() {
        let m = Masker::new(
            patterns("appdb.users.email,shop.*.card*,appdb.users.id"),
            b"k",
        );
        let mut e = event(&[
            ("id", json!("7")),
            ("email", json!("a@b")),
            ("card_no", json!("4111")),
        ]);
        m.mask_event(&mut e);
        assert!(e.data.text("email").unwrap().starts_with(PREFIX));
        assert_eq!(e.data.text("card_no").unwrap(), "4111", "other database");
        // A masked primary key is masked in `pk` too, so the id stays deterministic.
        let pk = e.pk.text("id").unwrap();
        assert!(pk.starts_with(PREFIX), "{pk}");
        assert_eq!(e.data.text("id").unwrap(), pk);
        let mut again = event(&[
            ("id", json!("7")),
            ("email", json!("a@b")),
            ("card_no", json!("4111")),
        ]);
        m.mask_event(&mut again);
        assert_eq!(e.document_id(), again.document_id());
        assert!(ColumnPattern::parse("appdb.users").is_err());
        assert!(ColumnPattern::parse("a.b.c.d").is_err());
        assert!(ColumnPattern::parse("a..c").is_err());
    }

    #[test]
    fn hashes_are_stable_keyed_and_equal_for_equal_values() {
        let a = Masker::new(patterns(DEFAULT), b"key number one!!");
        let b = Masker::new(patterns(DEFAULT), b"key number two!!");
        assert_eq!(a.hash(b"hunter2"), a.hash(b"hunter2"));
        assert_ne!(a.hash(b"hunter2"), a.hash(b"hunter3"));
        assert_ne!(a.hash(b"hunter2"), b.hash(b"hunter2"));
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let rfc = Masker::new(Vec::new(), b"Jefe");
        assert_eq!(
            rfc.hash(b"what do ya want for nothing?"),
            "hmac:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The string's contents, not its JSON quoting: a number and a
        // string of the same text hash alike, as do escapes.
        let mut e = event(&[
            ("id", json!(1)),
            ("token", json!("a\"b")),
            ("secret", json!(42)),
        ]);
        a.mask_event(&mut e);
        assert_eq!(e.data.text("token").unwrap(), a.hash(b"a\"b"));
        assert_eq!(e.data.text("secret").unwrap(), a.hash(b"42"));
    }

    #[test]
    fn an_empty_list_turns_masking_off() {
        let cfg = MaskConfig {
            columns: Vec::new(),
            key: None,
            dlq_keep_original: true,
        };
        let dir = tempfile::tempdir().unwrap();
        assert!(Masker::build(&cfg, dir.path()).unwrap().is_none());
        assert!(
            !dir.path().join(KEY_FILE).exists(),
            "no key without masking"
        );
    }

    #[test]
    fn a_generated_key_is_kept_owner_only_and_reused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        let cfg = MaskConfig {
            columns: patterns(DEFAULT),
            key: None,
            dlq_keep_original: false,
        };
        let first = Masker::build(&cfg, &dir).unwrap().unwrap();
        let path = dir.join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = Masker::build(&cfg, &dir).unwrap().unwrap();
        assert_eq!(
            first.hash(b"x"),
            second.hash(b"x"),
            "same key after a restart"
        );
        // The file's text is the key, as CDC_MASK_KEY_FILE would read it.
        let text = std::fs::read_to_string(&path).unwrap();
        let explicit = Masker::new(Vec::new(), text.trim_end().as_bytes());
        assert_eq!(first.hash(b"x"), explicit.hash(b"x"));
        let other = tempfile::tempdir().unwrap();
        let third = Masker::build(&cfg, other.path()).unwrap().unwrap();
        assert_ne!(
            first.hash(b"x"),
            third.hash(b"x"),
            "each data dir its own key"
        );
        // Started at once on one data directory, all use the same key.
        let racing = tempfile::tempdir().unwrap();
        let hashes: Vec<String> = std::thread::scope(|s| {
            let starts: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Masker::build(&cfg, racing.path()).unwrap().unwrap()))
                .collect();
            starts
                .into_iter()
                .map(|t| t.join().unwrap().hash(b"x"))
                .collect()
        });
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
        let left: Vec<_> = std::fs::read_dir(racing.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only mask.key, no temporary file");
        std::fs::write(&path, "short\n").unwrap();
        let err = Masker::build(&cfg, &dir).unwrap_err().to_string();
        assert!(
            err.contains("mask.key") && err.contains("fewer than"),
            "{err}"
        );
    }
}
