//! `RedbStore`: the on-disk `Store`, one redb file `<dir>/messages.redb` with
//! two tables, `messages: u64 -> bytes` and `payloads: u64 -> bytes` (a
//! payload shared by the records of one multicast, stored once).
//!
//! Owns: opening/creating the file and mapping redb errors to `StoreError`.
//! Must never: commit with a durability weaker than `Durability::Immediate`
//! (that is the whole point of `commit`), hold a write transaction across
//! calls, or batch/queue anything itself (that is `group_commit`'s job).

use super::{Store, StoreError, StoreOp};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");

/// File name inside the directory given to `open`.
pub const FILE_NAME: &str = "messages.redb";

pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

fn map_err<E: Into<redb::Error>>(e: E) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(m) => StoreError::Corrupt(m),
        other => StoreError::Io(other.to_string()),
    }
}

impl RedbStore {
    /// Creates `dir` if needed and opens (or creates) `dir/messages.redb`.
    /// After an unclean shutdown redb repairs the file here (may take a while
    /// for a large file); the last committed transaction is what is visible.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(map_err)?;
        // Make sure the table exists so readers never see TableDoesNotExist.
        let txn = db.begin_write().map_err(map_err)?;
        txn.open_table(MESSAGES).map_err(map_err)?;
        txn.open_table(PAYLOADS).map_err(map_err)?;
        txn.commit().map_err(map_err)?;
        Ok(RedbStore { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load_table(&self, def: TableDefinition<u64, &[u8]>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(map_err)?;
        let table = txn.open_table(def).map_err(map_err)?;
        let mut out = Vec::with_capacity(table.len().map_err(map_err)? as usize);
        for row in table.iter().map_err(map_err)? {
            let (k, v) = row.map_err(map_err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(map_err)?;
        // Immediate is redb's default; set it explicitly so a future default
        // change can never silently drop the fsync.
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        {
            let mut table = txn.open_table(MESSAGES).map_err(map_err)?;
            let mut payloads = txn.open_table(PAYLOADS).map_err(map_err)?;
            for op in ops {
                match op {
                    StoreOp::Put { id, value } => {
                        table.insert(*id, value.as_slice()).map_err(map_err)?;
                    }
                    StoreOp::Delete { id } => {
                        table.remove(*id).map_err(map_err)?;
                    }
                    StoreOp::PutPayload { id, value } => {
                        payloads.insert(*id, value.as_slice()).map_err(map_err)?;
                    }
                    StoreOp::DeletePayload { id } => {
                        payloads.remove(*id).map_err(map_err)?;
                    }
                }
            }
        }
        // On any error above `txn` is dropped un-committed: redb aborts it,
        // so a commit is all-or-nothing.
        txn.commit().map_err(map_err)
    }

    fn load_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.load_table(MESSAGES)
    }

    fn load_payloads(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.load_table(PAYLOADS)
    }

    fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(map_err)?;
        let table = txn.open_table(MESSAGES).map_err(map_err)?;
        table.len().map_err(map_err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GroupCommitConfig, GroupCommitter};
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    const CHILD_DIR_ENV: &str = "PULSEGATE_STORE_CRASH_CHILD_DIR";
    const CHILD_START_ENV: &str = "PULSEGATE_STORE_CRASH_CHILD_START";

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let p = std::env::temp_dir().join(format!("pulsegate-store-{name}-{}-{nanos}", std::process::id()));
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0); // best effort cleanup
        }
    }

    fn payload(id: u64) -> Vec<u8> {
        let mut v = format!("msg-{id}-").into_bytes();
        v.resize(300, b'x');
        v
    }

    #[test]
    fn round_trip_put_delete_load_all() {
        let dir = TempDir::new("roundtrip");
        let s = RedbStore::open(&dir.0).expect("open");
        assert!(s.path().ends_with(FILE_NAME));
        assert_eq!(s.load_all().expect("load empty"), vec![]);
        s.commit(&[
            StoreOp::Put {
                id: 5,
                value: b"five".to_vec(),
            },
            StoreOp::Put {
                id: 1,
                value: b"one".to_vec(),
            },
            StoreOp::Put {
                id: 3,
                value: b"three".to_vec(),
            },
            StoreOp::Put {
                id: 9,
                value: b"nine".to_vec(),
            },
            StoreOp::Delete { id: 9 },
        ])
        .expect("commit");
        s.commit(&[StoreOp::Delete { id: 3 }, StoreOp::Delete { id: 42 }])
            .expect("commit 2");
        s.commit(&[]).expect("empty commit");
        assert_eq!(
            s.load_all().expect("load"),
            vec![(1, b"one".to_vec()), (5, b"five".to_vec())]
        );
        assert_eq!(s.len().expect("len"), 2);
        assert!(!s.is_empty().expect("is_empty"));
    }

    #[test]
    fn payload_rows_are_a_table_of_their_own() {
        let dir = TempDir::new("payloads");
        {
            let s = RedbStore::open(&dir.0).expect("open");
            s.commit(&[
                StoreOp::PutPayload {
                    id: 7,
                    value: vec![1; 1000],
                },
                StoreOp::Put {
                    id: 7,
                    value: b"record".to_vec(),
                },
                StoreOp::PutPayload { id: 8, value: vec![2] },
                StoreOp::DeletePayload { id: 8 },
            ])
            .expect("commit");
        }
        let s = RedbStore::open(&dir.0).expect("reopen");
        assert_eq!(s.load_payloads().expect("payloads"), vec![(7, vec![1; 1000])]);
        assert_eq!(s.load_all().expect("messages"), vec![(7, b"record".to_vec())]);
        s.commit(&[StoreOp::DeletePayload { id: 7 }]).expect("delete");
        assert!(s.load_payloads().expect("payloads").is_empty());
        assert_eq!(s.len().expect("len"), 1, "the record is another table's");
    }

    #[test]
    fn reopen_after_drop_keeps_data_and_second_open_is_refused() {
        let dir = TempDir::new("reopen");
        {
            let s = RedbStore::open(&dir.0).expect("open");
            let ops: Vec<StoreOp> = (0..100).map(|id| StoreOp::Put { id, value: payload(id) }).collect();
            s.commit(&ops).expect("commit");
            s.commit(&[StoreOp::Delete { id: 50 }]).expect("delete");
            assert!(matches!(RedbStore::open(&dir.0), Err(StoreError::Io(_))));
        }
        let s = RedbStore::open(&dir.0).expect("reopen");
        let rows = s.load_all().expect("load");
        assert_eq!(rows.len(), 99);
        assert!(rows.iter().all(|(id, v)| *id != 50 && *v == payload(*id)));
    }

    /// Not a test on its own: the body of the child process of
    /// `sigkill_loses_no_acknowledged_record`; returns at once otherwise.
    #[test]
    fn crash_child_helper() {
        let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
            return;
        };
        let start: u64 = std::env::var(CHILD_START_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let store = Arc::new(RedbStore::open(Path::new(&dir)).expect("child open"));
        let gc = Arc::new(GroupCommitter::start(store, GroupCommitConfig::default()));
        let next = Arc::new(AtomicU64::new(start));
        let t0 = Instant::now();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (gc, next) = (Arc::clone(&gc), Arc::clone(&next));
                std::thread::spawn(move || {
                    // Bounded so an orphaned child stops by itself.
                    while t0.elapsed() < Duration::from_secs(60) {
                        let id = next.fetch_add(1, Ordering::SeqCst);
                        gc.commit(vec![StoreOp::Put { id, value: payload(id) }])
                            .expect("child commit");
                        let mut out = std::io::stdout().lock();
                        if writeln!(out, "ACK {id}").and_then(|_| out.flush()).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("child worker");
        }
    }

    #[test]
    fn sigkill_loses_no_acknowledged_record() {
        let dir = TempDir::new("crash");
        let module = module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest);
        let child_test = format!("{module}::crash_child_helper");
        let exe = std::env::current_exe().expect("test binary path");
        let mut start = 0u64;
        for round in 0..3u64 {
            let mut child = Command::new(&exe)
                .args([child_test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_DIR_ENV, &dir.0)
                .env(CHILD_START_ENV, start.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn child");
            let stdout = child.stdout.take().expect("piped stdout");
            let mut lines = BufReader::new(stdout).lines();
            let mut acked = Vec::new();
            let target = 500 + round * 250;
            fn parse(acked: &mut Vec<u64>, line: std::io::Result<String>) {
                if let Some(id) = line.ok().as_deref().and_then(|l| l.strip_prefix("ACK ")) {
                    acked.push(id.parse::<u64>().expect("ack id"));
                }
            }
            for line in lines.by_ref() {
                parse(&mut acked, line);
                if acked.len() >= target as usize {
                    break;
                }
            }
            child.kill().expect("SIGKILL child"); // Child::kill is SIGKILL on Unix
            // Lines still in the pipe were acknowledged before the kill.
            for line in lines {
                parse(&mut acked, line);
            }
            let status = child.wait().expect("reap child");
            assert!(acked.len() >= target as usize, "child ended early: {status:?}");
            let store = RedbStore::open(&dir.0).expect("reopen after SIGKILL");
            let rows: BTreeMap<u64, Vec<u8>> = store.load_all().expect("load").into_iter().collect();
            let lost: Vec<u64> = acked
                .iter()
                .copied()
                .filter(|id| rows.get(id) != Some(&payload(*id)))
                .collect();
            assert!(
                lost.is_empty(),
                "round {round}: {} acked ids lost: {lost:?}",
                lost.len()
            );
            eprintln!(
                "round {round}: {} acked this round, {} rows in total after SIGKILL ({status:?})",
                acked.len(),
                rows.len()
            );
            start = rows.keys().next_back().map_or(start, |m| m + 1);
        }
    }
}
