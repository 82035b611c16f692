//! Durable Raft storage: a write-ahead file in front of raft-rs's in-memory `MemStorage`.
//!
//! Every change (entries, hard state, conf state, snapshot, applied membership, compaction) is
//! appended to `raft.wal` as a checksummed record and fsync'd before raft-rs is told it is
//! persisted; on start the file is replayed into memory. A torn tail (a crash mid-write) ends
//! the replay at the last whole record, so a restart always sees a consistent prefix. When the
//! file grows past `REWRITE_BYTES`, it is rewritten as one snapshot plus the entries after it.
//!
//! Snapshots carry the membership (the ring state machine) at the applied index, so a node
//! that joins catches up by snapshot first, as raft-rs recommends.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as PbMessage;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::storage::{MemStorage, Storage};
use raft::{GetEntriesContext, RaftState, StorageError};

/// Rewrite the file once it is this large.
const REWRITE_BYTES: u64 = 4 << 20;
/// Keep at most this many applied entries in memory before compacting.
const KEEP_APPLIED: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("raft log I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("raft log record: {0}")]
    Decode(String),
    #[error(transparent)]
    Raft(#[from] raft::Error),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Kind {
    Entry = 1,
    HardState = 2,
    ConfState = 3,
    Snapshot = 4,
    Applied = 5,
}

/// raft-rs storage whose every change is on disk before it is acknowledged.
pub struct DiskStorage {
    mem: MemStorage,
    dir: PathBuf,
    wal: BufWriter<File>,
    wal_bytes: u64,
    /// The membership at `applied`, served as snapshot data.
    applied: u64,
    applied_data: Vec<u8>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn encode_record(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(payload.len() + 9);
    rec.extend_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind as u8]);
    h.update(payload);
    rec.extend_from_slice(&h.finalize().to_le_bytes());
    rec.push(kind as u8);
    rec.extend_from_slice(payload);
    rec
}

/// Reads whole, checksummed records; stops at the first torn or corrupt one.
/// A record: its kind byte and payload.
type Record = (u8, Vec<u8>);

fn read_records(path: &Path) -> Result<(Vec<Record>, u64), WalError> {
    let mut records = Vec::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((records, 0)),
        Err(e) => return Err(io(path)(e)),
    };
    let mut r = BufReader::new(file);
    let mut good = 0u64;
    loop {
        let mut head = [0u8; 8];
        if r.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > (64 << 20) {
            break;
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
            break;
        }
        good += 8 + len as u64;
        let payload = body.split_off(1);
        records.push((body[0], payload));
    }
    Ok((records, good))
}

impl DiskStorage {
    /// Opens (or creates) the storage in `dir`, replaying what is there.
    pub fn open(dir: &Path) -> Result<DiskStorage, WalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("raft.wal");
        let (records, good) = read_records(&path)?;
        let mem = MemStorage::new();
        let mut applied = 0;
        let mut applied_data = Vec::new();
        {
            let mut core = mem.wl();
            for (kind, payload) in records {
                let bad = |e: protobuf::ProtobufError| WalError::Decode(e.to_string());
                match kind {
                    k if k == Kind::Entry as u8 => {
                        let e = Entry::parse_from_bytes(&payload).map_err(bad)?;
                        core.append(&[e])?;
                    }
                    k if k == Kind::HardState as u8 => {
                        core.set_hardstate(HardState::parse_from_bytes(&payload).map_err(bad)?)
                    }
                    k if k == Kind::ConfState as u8 => {
                        core.set_conf_state(ConfState::parse_from_bytes(&payload).map_err(bad)?)
                    }
                    k if k == Kind::Snapshot as u8 => {
                        let s = Snapshot::parse_from_bytes(&payload).map_err(bad)?;
                        applied = s.get_metadata().index;
                        applied_data = s.get_data().to_vec();
                        core.apply_snapshot(s)?;
                    }
                    k if k == Kind::Applied as u8 && payload.len() >= 8 => {
                        let mut idx = [0u8; 8];
                        idx.copy_from_slice(&payload[..8]);
                        applied = u64::from_le_bytes(idx);
                        applied_data = payload[8..].to_vec();
                    }
                    other => return Err(WalError::Decode(format!("unknown record kind {other}"))),
                }
            }
        }
        // Cut a torn tail so that new records follow whole ones.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        file.set_len(good).map_err(io(&path))?;
        Ok(DiskStorage {
            mem,
            dir: dir.to_owned(),
            wal: BufWriter::new(file),
            wal_bytes: good,
            applied,
            applied_data,
        })
    }

    /// True when the storage holds no Raft state yet (a new node).
    pub fn is_empty(&self) -> bool {
        self.mem.rl().hard_state().term == 0
            && self.mem.first_index().unwrap_or(1) == 1
            && self.mem.last_index().unwrap_or(0) == 0
            && self
                .mem
                .initial_state()
                .map_or(true, |s| s.conf_state.voters.is_empty())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The membership data last recorded as applied, and its index.
    pub fn applied(&self) -> (u64, &[u8]) {
        (self.applied, &self.applied_data)
    }

    fn write(&mut self, kind: Kind, payload: &[u8]) -> Result<(), WalError> {
        let rec = encode_record(kind, payload);
        self.wal_bytes += rec.len() as u64;
        let path = self.dir.join("raft.wal");
        self.wal.write_all(&rec).map_err(io(&path))
    }

    fn pb(m: &impl PbMessage) -> Result<Vec<u8>, WalError> {
        m.write_to_bytes()
            .map_err(|e| WalError::Decode(e.to_string()))
    }

    /// Flushes and fsyncs what was written since the last sync.
    pub fn sync(&mut self) -> Result<(), WalError> {
        let path = self.dir.join("raft.wal");
        self.wal.flush().map_err(io(&path))?;
        self.wal.get_ref().sync_data().map_err(io(&path))
    }

    pub fn append(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        for e in entries {
            self.write(Kind::Entry, &Self::pb(e)?)?;
        }
        self.mem.wl().append(entries)?;
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), WalError> {
        self.write(Kind::HardState, &Self::pb(&hs)?)?;
        self.mem.wl().set_hardstate(hs);
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> Result<(), WalError> {
        let mut hs = self.mem.rl().hard_state().clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), WalError> {
        self.write(Kind::ConfState, &Self::pb(&cs)?)?;
        self.mem.wl().set_conf_state(cs);
        Ok(())
    }

    /// Installs a snapshot received from the leader (its data is the membership).
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), WalError> {
        self.write(Kind::Snapshot, &Self::pb(&snapshot)?)?;
        self.applied = snapshot.get_metadata().index;
        self.applied_data = snapshot.get_data().to_vec();
        self.mem.wl().apply_snapshot(snapshot)?;
        Ok(())
    }

    /// Records the membership as of `index` (after applying it); compacts the log behind it.
    pub fn set_applied(&mut self, index: u64, data: Vec<u8>) -> Result<(), WalError> {
        let mut payload = index.to_le_bytes().to_vec();
        payload.extend_from_slice(&data);
        self.write(Kind::Applied, &payload)?;
        self.applied = index;
        self.applied_data = data;
        if index > KEEP_APPLIED {
            self.mem.wl().compact(index - KEEP_APPLIED)?;
        }
        Ok(())
    }

    /// Bootstraps a new cluster's first node: a snapshot at index 1 with `conf` and `data`,
    /// so that every later member catches up by snapshot first.
    pub fn bootstrap(&mut self, conf: ConfState, data: Vec<u8>) -> Result<(), WalError> {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 1;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().set_conf_state(conf);
        snap.set_data(data.into());
        self.apply_snapshot(snap)?;
        self.sync()
    }

    /// Rewrites the file as one snapshot and the entries after it, once it is large.
    pub fn maybe_rewrite(&mut self) -> Result<(), WalError> {
        if self.wal_bytes < REWRITE_BYTES {
            return Ok(());
        }
        let snap = self.snapshot_at_applied()?;
        let (hs, cs, entries) = {
            let first = snap.get_metadata().index + 1;
            let last = self.mem.last_index()?;
            let entries = if last >= first {
                self.mem
                    .entries(first, last + 1, None, GetEntriesContext::empty(false))?
            } else {
                Vec::new()
            };
            let state = self.mem.initial_state()?;
            (state.hard_state, state.conf_state, entries)
        };
        let tmp = self.dir.join("raft.wal.tmp");
        let path = self.dir.join("raft.wal");
        let mut out = BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
        let mut bytes = 0;
        let mut put = |kind, payload: Vec<u8>| -> Result<(), WalError> {
            let rec = encode_record(kind, &payload);
            bytes += rec.len() as u64;
            out.write_all(&rec).map_err(io(&tmp))
        };
        put(Kind::Snapshot, Self::pb(&snap)?)?;
        for e in &entries {
            put(Kind::Entry, Self::pb(e)?)?;
        }
        put(Kind::ConfState, Self::pb(&cs)?)?;
        put(Kind::HardState, Self::pb(&hs)?)?;
        out.flush().map_err(io(&tmp))?;
        out.get_ref().sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        self.wal = BufWriter::new(file);
        self.wal_bytes = bytes;
        Ok(())
    }

    fn snapshot_at_applied(&self) -> Result<Snapshot, raft::Error> {
        let index = self.applied.max(self.mem.first_index()? - 1);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = self.mem.term(index)?;
        snap.mut_metadata()
            .set_conf_state(self.mem.initial_state()?.conf_state);
        snap.set_data(self.applied_data.clone().into());
        Ok(snap)
    }
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// The membership at the applied index, with the conf state it was applied with.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.applied < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        self.snapshot_at_applied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        }
    }

    #[test]
    fn survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            assert!(s.is_empty());
            s.bootstrap(ConfState::from((vec![1], vec![])), b"m1".to_vec())
                .unwrap();
            s.append(&[entry(2, 1), entry(3, 1)]).unwrap();
            s.set_hard_state(HardState {
                term: 1,
                commit: 3,
                ..Default::default()
            })
            .unwrap();
            s.set_applied(3, b"m3".to_vec()).unwrap();
            s.sync().unwrap();
        }
        let s = DiskStorage::open(dir.path()).unwrap();
        assert!(!s.is_empty());
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 1);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 3);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1]);
        assert_eq!(s.applied(), (3, &b"m3"[..]));
        let snap = s.snapshot(3, 2).unwrap();
        assert_eq!(
            (snap.get_metadata().index, snap.get_data()),
            (3, &b"m3"[..])
        );
    }

    /// A crash between appending entries and persisting the hard state (or mid-record) leaves
    /// a consistent log: whole records survive, the torn one is dropped, and the log appends.
    #[test]
    fn a_torn_tail_is_cut_and_the_log_stays_consistent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.bootstrap(ConfState::from((vec![1], vec![])), Vec::new())
                .unwrap();
            s.append(&[entry(2, 1), entry(3, 1)]).unwrap();
            s.sync().unwrap(); // crash here: entries on disk, hard state not yet
        }
        let path = dir.path().join("raft.wal");
        let whole = std::fs::metadata(&path).unwrap().len();
        // And a half-written record after them.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encode_record(Kind::Entry, &[1, 2, 3, 4, 5])[..7])
            .unwrap();
        drop(f);

        let mut s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 1);
        // A conflicting append from a new leader replaces the unstable suffix.
        s.append(&[entry(3, 2), entry(4, 2)]).unwrap();
        s.sync().unwrap();
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!((s.term(3).unwrap(), s.last_index().unwrap()), (2, 4));
    }

    #[test]
    fn rewrite_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::open(dir.path()).unwrap();
        s.bootstrap(ConfState::from((vec![1], vec![])), Vec::new())
            .unwrap();
        let big: Vec<Entry> = (2..3000)
            .map(|i| {
                let mut e = entry(i, 1);
                e.data = vec![0u8; 2000].into();
                e
            })
            .collect();
        s.append(&big).unwrap();
        s.set_commit(2999).unwrap();
        s.set_applied(2999, b"members".to_vec()).unwrap();
        s.sync().unwrap();
        s.maybe_rewrite().unwrap();
        drop(s);
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!(s.last_index().unwrap(), 2999);
        assert_eq!(s.applied(), (2999, &b"members"[..]));
        assert!(
            std::fs::metadata(dir.path().join("raft.wal"))
                .unwrap()
                .len()
                < REWRITE_BYTES
        );
    }
}
