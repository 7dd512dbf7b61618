//! `RedbStore`: the on-disk `Store`, one redb file `<dir>/messages.redb` with
//! one table `messages: u64 -> bytes`.
//!
//! Owns: opening/creating the file, reopening it after a failed write (redb
//! refuses everything after an I/O error until reopened), probing that it can
//! commit again, compacting it, and mapping redb errors to `StoreError`.
//! Must never: commit with a durability weaker than `Durability::Immediate`
//! (that is the whole point of `commit`), hold a write transaction across
//! calls, batch/queue anything itself (that is `group_commit`'s job), reopen
//! or compact while a transaction of its own is live (the `RwLock` write side
//! excludes them), or leave a half-created file where a store is expected (a
//! new file is created beside it and renamed into place once it has a table).

use super::{CompactPolicy, Compaction, Store, StoreError, StoreOp};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::Instant;

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");

/// File name inside the directory given to `open`.
pub const FILE_NAME: &str = "messages.redb";

// Store recovery (probe) only: holds at most one record, between two commits.
const PROBE: TableDefinition<u64, &[u8]> = TableDefinition::new("probe");
/// A new store is created under this name, then renamed to `FILE_NAME`.
const NEW_FILE_NAME: &str = "messages.redb.new";

pub struct RedbStore {
    /// None: not open (the open at start-up or a reopen failed).
    db: RwLock<Option<Database>>,
    /// A write failed: the `Database` refuses everything until reopened.
    poisoned: AtomicBool,
    /// Most bytes in allocated pages seen since the last compaction (`compact`).
    live_peak_bytes: AtomicU64,
    path: PathBuf,
}

fn map_err<E: Into<redb::Error>>(e: E) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(m) => StoreError::Corrupt(m),
        redb::Error::Io(io) if is_no_space(&io) => StoreError::NoSpace(io.to_string()),
        other => StoreError::Io(other.to_string()),
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl RedbStore {
    /// Creates `dir` if needed and opens (or creates) `dir/messages.redb`.
    /// After an unclean shutdown redb repairs the file here (may take a while
    /// for a large file); the last committed transaction is what is visible.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        let store = RedbStore::unopened(dir);
        let db = open_db(&store.path)?;
        *store.db.write().unwrap_or_else(PoisonError::into_inner) = Some(db);
        Ok(store)
    }

    /// A store whose file is not open yet: every call fails until `probe`
    /// opens it (for starting on a full disk when there is nothing to recover).
    pub fn unopened(dir: &Path) -> RedbStore {
        RedbStore {
            db: RwLock::new(None),
            poisoned: AtomicBool::new(false),
            live_peak_bytes: AtomicU64::new(0),
            path: dir.join(FILE_NAME),
        }
    }

    /// True if `dir` may hold records: its store file exists and was ever
    /// initialised. False means an open that failed loses nothing.
    pub fn may_hold_records(dir: &Path) -> bool {
        initialised(&dir.join(FILE_NAME)).unwrap_or(true)
    }

    /// The start-up open. A store that fails to open but holds nothing yet
    /// (a full disk before the first create) comes back unopened with its
    /// error: the gateway starts degraded and the committer's probe opens it.
    /// A file with records that cannot be opened for lack of space is retried
    /// here (backoff `retry_ms`, logged each time) until it opens or `stop` is
    /// set, because its records must be recovered before anything is taken.
    /// Any other error is returned.
    pub fn open_at_start(
        dir: &Path,
        retry_ms: (u64, u64),
        stop: &AtomicBool,
    ) -> Result<(RedbStore, Option<StoreError>), StoreError> {
        let mut wait_ms = retry_ms.0;
        loop {
            let e = match RedbStore::open(dir) {
                Ok(s) => return Ok((s, None)),
                Err(e) => e,
            };
            let retryable = matches!(e, StoreError::Io(_) | StoreError::NoSpace(_));
            if retryable && !RedbStore::may_hold_records(dir) {
                eprintln!(
                    "pulsegate: WARNING: cannot create the store in {}: {e}; starting degraded (POSTs get 503) until it can",
                    dir.display()
                );
                return Ok((RedbStore::unopened(dir), Some(e)));
            }
            if !matches!(e, StoreError::NoSpace(_)) || stop.load(Ordering::Acquire) {
                return Err(e);
            }
            eprintln!(
                "pulsegate: cannot open the store in {} ({e}); its messages must be recovered first: retrying in {wait_ms} ms",
                dir.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(wait_ms));
            wait_ms = wait_ms.saturating_mul(2).min(retry_ms.1);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() || self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Io(
                "store not open (a write failed; reopened by the next probe)".into(),
            ));
        }
        Ok(guard)
    }

    /// `r`, marking the database for a reopen if it failed in storage.
    fn watch<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(r, Err(StoreError::Io(_) | StoreError::NoSpace(_))) {
            self.poisoned.store(true, Ordering::Release);
        }
        r
    }

    /// Drops a poisoned or missing `Database` and opens the file again.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if guard.is_some() && !self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        // Dropping releases the file lock; the file stays marked for repair.
        drop(guard.take());
        *guard = Some(open_db(&self.path)?);
        self.poisoned.store(false, Ordering::Release);
        Ok(())
    }
}

/// Opens `path`, or creates it beside and renames it into place, so a create
/// that fails (a full disk) never leaves an uninitialised file behind.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
    if initialised(path).map_err(|e| StoreError::Io(format!("read {}: {e}", path.display())))? {
        let db = Database::create(path).map_err(map_err)?;
        ensure_table(&db)?;
        return Ok(db);
    }
    let new = dir.join(NEW_FILE_NAME);
    let _ = std::fs::remove_file(&new); // a leftover of a failed create; absent is fine
    let created = Database::create(&new).map_err(map_err).and_then(|db| {
        ensure_table(&db)?;
        Ok(db)
    });
    let db = match created {
        Ok(db) => db,
        Err(e) => {
            let _ = std::fs::remove_file(&new); // frees what the failed create took
            return Err(e);
        }
    };
    // Renaming keeps the inode, so the lock redb holds on it stays valid.
    std::fs::rename(&new, path).map_err(|e| StoreError::Io(format!("rename to {}: {e}", path.display())))?;
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all()
            .map_err(|e| StoreError::Io(format!("sync {}: {e}", dir.display())))?;
    }
    Ok(db)
}

/// Whether `path` holds an initialised redb file (absent, empty or all-zero
/// head: never initialised, e.g. left by a create that failed on a full disk).
fn initialised(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut head = [0u8; 4];
    match f.read_exact(&mut head) {
        Ok(()) => Ok(head != [0u8; 4]),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Make sure the table exists so readers never see TableDoesNotExist.
fn ensure_table(db: &Database) -> Result<(), StoreError> {
    let read = db.begin_read().map_err(map_err)?;
    if read.open_table(MESSAGES).is_ok() {
        return Ok(());
    }
    drop(read);
    let txn = db.begin_write().map_err(map_err)?;
    txn.open_table(MESSAGES).map_err(map_err)?;
    txn.commit().map_err(map_err)
}

fn write(db: &Database, ops: &[StoreOp]) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(map_err)?;
    // Immediate is redb's default; set it explicitly so a future default
    // change can never silently drop the fsync.
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Io(e.to_string()))?;
    {
        let mut table = txn.open_table(MESSAGES).map_err(map_err)?;
        for op in ops {
            match op {
                StoreOp::Put { id, value } => {
                    table.insert(*id, value.as_slice()).map_err(map_err)?;
                }
                StoreOp::Delete { id } => {
                    table.remove(*id).map_err(map_err)?;
                }
            }
        }
    }
    // On any error above `txn` is dropped un-committed: redb aborts it,
    // so a commit is all-or-nothing.
    txn.commit().map_err(map_err)
}

/// Writes a `bytes`-long probe record in one commit and removes it in the next.
fn probe_write(db: &Database, bytes: usize) -> Result<(), StoreError> {
    let value = vec![0u8; bytes];
    for put in [true, false] {
        let mut txn = db.begin_write().map_err(map_err)?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        {
            let mut table = txn.open_table(PROBE).map_err(map_err)?;
            if put {
                table.insert(0, value.as_slice()).map_err(map_err)?;
            } else {
                table.remove(0).map_err(map_err)?;
            }
        }
        txn.commit().map_err(map_err)?;
    }
    Ok(())
}

/// (file bytes, bytes in allocated pages) of `db` at `path`.
fn usage(db: &Database, path: &Path) -> Result<(u64, u64), StoreError> {
    let txn = db.begin_write().map_err(map_err)?;
    let stats = txn.stats().map_err(map_err)?;
    txn.abort().map_err(map_err)?;
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| StoreError::Io(format!("stat {}: {e}", path.display())))?
        .len();
    Ok((file_bytes, stats.allocated_pages() * stats.page_size() as u64))
}

impl Store for RedbStore {
    fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let guard = self.db()?;
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        self.watch(write(db, ops))
    }

    fn load_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        let txn = db.begin_read().map_err(map_err)?;
        let table = txn.open_table(MESSAGES).map_err(map_err)?;
        let mut out = Vec::with_capacity(table.len().map_err(map_err)? as usize);
        for row in table.iter().map_err(map_err)? {
            let (k, v) = row.map_err(map_err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn len(&self) -> Result<u64, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        let txn = db.begin_read().map_err(map_err)?;
        let table = txn.open_table(MESSAGES).map_err(map_err)?;
        table.len().map_err(map_err)
    }

    fn probe(&self, bytes: usize) -> Result<(), StoreError> {
        self.reopen()?;
        let guard = self.db()?;
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        self.watch(probe_write(db, bytes))
    }

    fn compact(&self, policy: &CompactPolicy) -> Result<Option<Compaction>, StoreError> {
        let (before, live) = {
            let guard = self.db()?;
            let db = guard.as_ref().ok_or(StoreError::Closed)?;
            self.watch(usage(db, &self.path))?
        };
        let free = before.saturating_sub(live);
        // Not the file's free share alone: redb grows the file by doubling, so right after
        // a growth half of it is free. Compact once the live data fell `free_percent_min`
        // below its high-water mark, i.e. after a burst is gone.
        let peak = self.live_peak_bytes.fetch_max(live, Ordering::AcqRel).max(live);
        if policy.free_bytes_min == 0
            || free < policy.free_bytes_min
            || live.saturating_mul(100) > peak.saturating_mul(100 - u64::from(policy.free_percent_min.min(100)))
        {
            return Ok(None);
        }
        let t0 = Instant::now();
        // The write side: no transaction of ours is live while it compacts.
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let db = guard.as_mut().ok_or(StoreError::Closed)?;
        let r = db.compact().map_err(|e| match e {
            redb::CompactionError::Storage(s) => map_err(s),
            other => StoreError::Io(format!("compact: {other}")),
        });
        drop(guard);
        self.watch(r)?;
        self.live_peak_bytes.store(live, Ordering::Release);
        let after = self.file_bytes().unwrap_or(before);
        Ok(Some(Compaction {
            file_bytes_before: before,
            file_bytes_after: after,
            live_bytes: live,
            live_peak_bytes: peak,
            duration_ms: t0.elapsed().as_millis() as u64,
        }))
    }

    fn file_bytes(&self) -> Option<u64> {
        std::fs::metadata(&self.path).ok().map(|m| m.len())
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

    #[test]
    fn compacts_only_once_the_live_data_fell_below_its_peak_and_the_file_shrinks() {
        let dir = TempDir::new("compact");
        let s = RedbStore::open(&dir.0).expect("open");
        let policy = CompactPolicy {
            free_bytes_min: 1 << 20,
            free_percent_min: 50,
            check_ms: 0,
        };
        for chunk in 0..100u64 {
            let ops: Vec<StoreOp> = (chunk * 100..chunk * 100 + 100)
                .map(|id| StoreOp::Put { id, value: payload(id) })
                .collect();
            s.commit(&ops).expect("put");
            // Growing: never compacted, whatever slack the file has.
            assert_eq!(s.compact(&policy).expect("check"), None, "chunk {chunk}");
        }
        let full = s.file_bytes().expect("size");
        let ops: Vec<StoreOp> = (0..9_900).map(|id| StoreOp::Delete { id }).collect();
        s.commit(&ops).expect("delete");
        // redb frees a commit's pages at the next commit.
        s.commit(&[StoreOp::Delete { id: u64::MAX }]).expect("next commit");
        let done = s.compact(&policy).expect("compact").expect("compacted");
        assert_eq!(done.file_bytes_before, full);
        assert!(done.file_bytes_after < full / 10, "{done:?}");
        assert_eq!(s.file_bytes(), Some(done.file_bytes_after));
        assert_eq!(s.compact(&policy).expect("again"), None, "nothing more to gain");
        let rows = s.load_all().expect("load");
        assert_eq!(rows.len(), 100);
        assert!(rows.iter().all(|(id, v)| *id >= 9_900 && *v == payload(*id)));
    }

    #[test]
    fn a_file_left_uninitialised_is_recreated_and_probe_reopens() {
        let dir = TempDir::new("uninit");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        // What a create on a full disk leaves: a sparse file of zeros.
        let f = std::fs::File::create(dir.0.join(FILE_NAME)).expect("create");
        f.set_len(1 << 20).expect("set_len");
        assert!(!RedbStore::may_hold_records(&dir.0));
        let s = RedbStore::open(&dir.0).expect("recreated");
        assert!(RedbStore::may_hold_records(&dir.0));
        s.commit(&[StoreOp::Put {
            id: 1,
            value: payload(1),
        }])
        .expect("put");
        // Poisoned (as after a failed write): refused until a probe reopens it.
        s.poisoned.store(true, Ordering::Release);
        assert!(s.commit(&[StoreOp::Delete { id: 1 }]).is_err());
        s.probe(64 << 10).expect("probe reopens and writes");
        assert_eq!(
            s.load_all().expect("load"),
            vec![(1, payload(1))],
            "the probe left nothing"
        );
        let unopened = RedbStore::unopened(&dir.0);
        assert!(unopened.len().is_err());
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
