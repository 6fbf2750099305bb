//! Append-only JSON-lines journal: the discovery loop's run state. Each record is one line, written
//! with a single `write` and fsynced before `append` returns, so that after a `kill -9` the file
//! holds every record whose `append` returned plus at most one torn last line. `open` reads the
//! records back, drops a torn last line (no newline, or not JSON) by truncating the file to the
//! last complete record, and refuses a damaged line anywhere else (naming the file and line).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use octet_core::{Error, Result};
use serde_json::Value;

/// An open journal, positioned at its end.
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// What `open` found.
pub struct Opened {
    pub journal: Journal,
    pub records: Vec<Value>,
    /// Bytes of a torn last line that were dropped (0 when the file ended cleanly).
    pub dropped_bytes: usize,
}

impl Journal {
    /// Opens (creating when absent) the journal at `path` and reads its records.
    pub fn open(path: &Path) -> Result<Opened> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut records = Vec::new();
        let mut good_end = 0usize;
        let mut start = 0usize;
        let mut line_no = 0usize;
        while start < bytes.len() {
            line_no += 1;
            let end = bytes[start..].iter().position(|&b| b == b'\n').map(|p| start + p);
            let Some(end) = end else { break };
            let parsed = std::str::from_utf8(&bytes[start..end])
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .filter(Value::is_object);
            match parsed {
                Some(v) => records.push(v),
                None if end + 1 == bytes.len() => break,
                None => {
                    return Err(Error::format(path, format!("line {line_no}"), "not a JSON object (journal damaged)"));
                }
            }
            good_end = end + 1;
            start = end + 1;
        }
        let dropped_bytes = bytes.len() - good_end;
        let file =
            OpenOptions::new().create(true).append(true).read(true).open(path).map_err(|e| Error::io(path, e))?;
        if dropped_bytes > 0 {
            file.set_len(good_end as u64).map_err(|e| Error::io(path, e))?;
            file.sync_all().map_err(|e| Error::io(path, e))?;
        }
        Ok(Opened { journal: Journal { path: path.to_path_buf(), file }, records, dropped_bytes })
    }

    /// Appends one record as a line and fsyncs it.
    pub fn append(&mut self, record: &Value) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::Other(format!("journal record: {e}")))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A torn last line is dropped and truncated away; appends continue after the last record.
    #[test]
    fn torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.jsonl");
        {
            let mut j = Journal::open(&p).unwrap().journal;
            j.append(&json!({"a": 1})).unwrap();
            j.append(&json!({"a": 2})).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"a\": 3, \"tru").unwrap();
        drop(f);
        let o = Journal::open(&p).unwrap();
        assert_eq!(o.records.len(), 2);
        assert_eq!(o.dropped_bytes, 13);
        let mut j = o.journal;
        j.append(&json!({"a": 4})).unwrap();
        let o = Journal::open(&p).unwrap();
        assert_eq!(o.records, vec![json!({"a": 1}), json!({"a": 2}), json!({"a": 4})]);
        assert_eq!(o.dropped_bytes, 0);
    }

    /// A complete but unparsable last line is torn too; one in the middle is an error naming it.
    #[test]
    fn damage_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"a\":\n").unwrap();
        assert_eq!(Journal::open(&p).unwrap().records.len(), 1);
        std::fs::write(&p, "{\"a\":1}\nxx\n{\"a\":2}\n").unwrap();
        let e = Journal::open(&p).err().unwrap().to_string();
        assert!(e.contains("line 2") && e.contains("journal.jsonl"), "{e}");
    }
}
