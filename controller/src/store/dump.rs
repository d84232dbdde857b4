//! `cairn-controller store export|import`: every record of every tree as JSON
//! lines, engine-neutral, so a site moves from sled to etcd (or back, or to a new
//! machine) by exporting with the old `[store]` and importing with the new one.
//!
//! The first line is a header with the schema version; each further line is
//! `{"tree": T, "key": K, "value": V}`, where V is the record as stored (JSON), or
//! `{"tree", "key", "raw": BASE64}` for a record that is not JSON, so that nothing is
//! lost, not even a damaged record.

use std::io::{BufRead, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Op, Store, StoreError, Tree, Txn, SCHEMA_VERSION};

/// Lines longer than this are refused (the largest records are image manifests).
const MAX_LINE: usize = 64 << 20;
/// Records per transaction on import.
const BATCH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Engine(#[from] super::EngineError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {detail}")]
    Bad { line: usize, detail: String },
    #[error("the target store already holds {records} records in {tree}; import only into an empty store")]
    NotEmpty { tree: &'static str, records: usize },
}

#[derive(Serialize, Deserialize)]
struct Header {
    cairn_store_export: u32,
    schema_version: u32,
}

/// A record; `value` is the stored JSON itself, byte for byte.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    tree: String,
    key: String,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
}

/// Writes every record; returns how many.
pub fn export(store: &Store, out: &mut impl Write) -> Result<usize, DumpError> {
    let header = Header {
        cairn_store_export: 1,
        schema_version: SCHEMA_VERSION,
    };
    serde_json::to_writer(&mut *out, &header).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    let mut n = 0;
    for tree in Tree::ALL {
        for (k, v) in store.engine().scan_prefix(tree.name(), b"")? {
            // A record that is not one line of JSON travels as base64.
            let json = serde_json::from_slice::<&RawValue>(&v)
                .ok()
                .filter(|_| !v.contains(&b'\n'));
            let (value, raw) = match json {
                Some(json) => (Some(json), None),
                None => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&v)),
                ),
            };
            let line = Line {
                tree: tree.name().into(),
                key: String::from_utf8_lossy(&k).into_owned(),
                value,
                raw,
            };
            serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
            n += 1;
        }
    }
    out.flush()?;
    Ok(n)
}

/// Loads an export into an empty store; returns how many records. Durable after the
/// caller's flush.
pub fn import(store: &Store, input: impl BufRead) -> Result<usize, DumpError> {
    for tree in Tree::ALL {
        let records = store.engine().scan_prefix(tree.name(), b"")?.len();
        if records > 0 {
            return Err(DumpError::NotEmpty {
                tree: tree.name(),
                records,
            });
        }
    }
    let mut input = input;
    let bad = |line: usize, detail: String| DumpError::Bad { line, detail };
    let first = next_line(&mut input, 1)?
        .ok_or_else(|| bad(1, "empty file: not a Cairn store export".into()))?;
    let header: Header = serde_json::from_slice(&first)
        .map_err(|e| bad(1, format!("not a Cairn store export: {e}")))?;
    if header.cairn_store_export != 1 || header.schema_version != SCHEMA_VERSION {
        return Err(bad(
            1,
            format!(
                "export format {} with schema {}; this controller reads format 1, schema {SCHEMA_VERSION}",
                header.cairn_store_export, header.schema_version
            ),
        ));
    }
    // Every line is read and checked before anything is written, so a bad line
    // leaves the store empty and the import can simply be run again.
    let mut ops = vec![];
    let mut no = 1;
    while let Some(line) = {
        no += 1;
        next_line(&mut input, no)?
    } {
        if line.is_empty() {
            continue;
        }
        let l: Line = serde_json::from_slice(&line).map_err(|e| bad(no, e.to_string()))?;
        let tree = Tree::from_name(&l.tree)
            .ok_or_else(|| bad(no, format!("unknown tree {:?}", l.tree)))?;
        let value = match (l.value, l.raw) {
            (Some(v), None) => v.get().as_bytes().to_vec(),
            (None, Some(raw)) => base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map_err(|e| bad(no, format!("raw: {e}")))?,
            _ => return Err(bad(no, "give exactly one of value and raw".into())),
        };
        ops.push(Op::Put {
            tree: tree.name(),
            key: l.key.into_bytes(),
            value,
        });
    }
    let n = ops.len();
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        store.engine().commit(Txn {
            checks: vec![],
            ops: ops.by_ref().take(BATCH).collect(),
        })?;
    }
    Ok(n)
}

/// The next line without its newline, at most [`MAX_LINE`] bytes (a longer one is
/// refused without reading it whole); `None` at the end.
fn next_line(input: &mut impl BufRead, no: usize) -> Result<Option<Vec<u8>>, DumpError> {
    let mut line = vec![];
    let read =
        std::io::Read::take(&mut *input, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE {
        return Err(DumpError::Bad {
            line: no,
            detail: format!("longer than {MAX_LINE} bytes"),
        });
    }
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_survives_export_and_import_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Store::open(&tmp.path().join("a")).unwrap();
        a.put(
            Tree::Hosts,
            "h-1",
            &serde_json::json!({"name": "one", "n": 1}),
        )
        .unwrap();
        a.put(Tree::Volumes, "ann/home", &"é ü".to_string())
            .unwrap();
        a.engine()
            .commit(Txn {
                checks: vec![],
                ops: vec![Op::Put {
                    tree: "audit",
                    key: b"0001".to_vec(),
                    value: b"\xffnot json".to_vec(),
                }],
            })
            .unwrap();
        let mut out = vec![];
        assert_eq!(export(&a, &mut out).unwrap(), 3);
        let b = Store::open(&tmp.path().join("b")).unwrap();
        assert_eq!(import(&b, &out[..]).unwrap(), 3);
        for tree in Tree::ALL {
            assert_eq!(
                a.engine().scan_prefix(tree.name(), b"").unwrap(),
                b.engine().scan_prefix(tree.name(), b"").unwrap(),
                "{}",
                tree.name()
            );
        }
        // Not into a store that holds records; nor a file that is not an export.
        let e = import(&b, &out[..]).unwrap_err().to_string();
        assert!(e.contains("already holds 1 records in hosts"), "{e}");
        let c = Store::open(&tmp.path().join("c")).unwrap();
        let e = import(&c, &b"{\"tree\":\"hosts\"}\n"[..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: not a Cairn store export"), "{e}");
        let mut tampered = out.clone();
        tampered.extend_from_slice(b"{\"tree\":\"nope\",\"key\":\"k\",\"value\":1}\n");
        let e = import(&c, &tampered[..]).unwrap_err().to_string();
        assert!(e.contains("line 5: unknown tree \"nope\""), "{e}");
        // Nothing of a refused import was written: it can be run again.
        assert_eq!(import(&c, &out[..]).unwrap(), 3);
    }
}
