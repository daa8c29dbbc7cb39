//! What stands between crosstalk and a storage directory it must not write: another process
//! holding it ([`DirLock`]), and a damaged database or write-ahead log ([`check_files`],
//! [`repair`]).
//!
//! Invariants: one process per directory (an exclusive `flock` held for the writer's lifetime;
//! the holder's PID is written into the lock file so the refusal can name it), and never a
//! silent fresh start: a 0-byte database or a WAL whose committed frames SQLite would skip is
//! refused before SQLite opens it, because opening would quietly drop that data.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The database file in a storage directory, and its write-ahead log.
pub const DB_FILE: &str = "crosstalk.db";
pub const WAL_FILE: &str = "crosstalk.db-wal";
const SHM_FILE: &str = "crosstalk.db-shm";
const LOCK_FILE: &str = "crosstalk.lock";

/// An exclusive lock on a storage directory, released when dropped (or when the process dies:
/// `flock` belongs to the open file, so a kill -9 leaves no stale lock behind).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Take the directory's lock without waiting, or name the process that holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        use rustix::fs::{FlockOperation, flock};
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(StoreError::Locked {
                    dir: dir.to_owned(),
                    pid: pid.trim().parse().ok(),
                });
            }
            Err(e) => {
                let source = std::io::Error::from(e);
                return Err(StoreError::Io { path, source });
            }
        }
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file })
    }
}

/// Refuse files SQLite would open without complaint but lose data from.
pub fn check_files(dir: &Path) -> Result<(), StoreError> {
    let db = dir.join(DB_FILE);
    let wal = dir.join(WAL_FILE);
    match std::fs::metadata(&db) {
        // A store is migrated the moment it is created: 0 bytes is a truncated file (a full
        // disk, a bad copy), and SQLite would start an empty store over it.
        Ok(m) if m.len() == 0 => {
            return Err(StoreError::Damaged {
                file: db,
                what: "the database file is empty (0 bytes)".into(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if wal_len(&wal)? > 0 {
                return Err(StoreError::Damaged {
                    file: db,
                    what: "the database file is missing but its write-ahead log is not".into(),
                });
            }
            return Ok(());
        }
        Err(source) => return Err(StoreError::Io { path: db, source }),
    }
    let bytes = match std::fs::read(&wal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StoreError::Io { path: wal, source }),
    };
    match wal_damage(&bytes) {
        Some(what) => Err(StoreError::Damaged { file: wal, what }),
        None => Ok(()),
    }
}

fn wal_len(wal: &Path) -> Result<u64, StoreError> {
    match std::fs::metadata(wal) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(StoreError::Io {
            path: wal.to_owned(),
            source,
        }),
    }
}

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's WAL checksum (https://sqlite.org/fileformat2.html#walformat), continued from `s`.
fn wal_checksum(data: &[u8], big_endian: bool, mut s: (u32, u32)) -> (u32, u32) {
    for word in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(word, 0), be32(word, 4))
        } else {
            let le =
                |a: usize| u32::from_le_bytes([word[a], word[a + 1], word[a + 2], word[a + 3]]);
            (le(0), le(4))
        };
        s.0 = s.0.wrapping_add(x0).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(x1).wrapping_add(s.0);
    }
    s
}

/// Why SQLite would skip committed frames of this WAL, if it would. SQLite replays frames up to
/// the first one whose checksum or salt does not match and silently ignores the rest; a torn
/// final write (nothing valid after it) is the normal end of a crash, but valid frames of the
/// current generation *after* a broken one are writes that committed and would be lost.
fn wal_damage(wal: &[u8]) -> Option<String> {
    if wal.is_empty() {
        return None;
    }
    if wal.len() < WAL_HEADER {
        return Some(format!(
            "the write-ahead log is truncated ({} bytes)",
            wal.len()
        ));
    }
    let magic = be32(wal, 0);
    let page = be32(wal, 8) as usize;
    let page = if page == 1 { 65536 } else { page };
    let header_ok = (magic & !1) == 0x377f_0682
        && page.is_power_of_two()
        && (512..=65536).contains(&page)
        && wal_checksum(&wal[..24], magic & 1 == 1, (0, 0)) == (be32(wal, 24), be32(wal, 28));
    if !header_ok {
        return Some("the write-ahead log header is invalid".into());
    }
    let big_endian = magic & 1 == 1;
    let salt = (be32(wal, 16), be32(wal, 20));
    let mut sum = (be32(wal, 24), be32(wal, 28));
    let frames: Vec<&[u8]> = wal[WAL_HEADER..].chunks(FRAME_HEADER + page).collect();
    let mut first_bad = None;
    for (i, frame) in frames.iter().enumerate() {
        let whole = frame.len() == FRAME_HEADER + page;
        let current = whole && (be32(frame, 8), be32(frame, 12)) == salt;
        if first_bad.is_none() {
            if !current {
                first_bad = Some(i);
                continue;
            }
            sum = wal_checksum(&frame[..8], big_endian, sum);
            sum = wal_checksum(&frame[FRAME_HEADER..], big_endian, sum);
            if sum != (be32(frame, 16), be32(frame, 20)) {
                first_bad = Some(i);
            }
        } else if current {
            let bad = first_bad.unwrap_or(i);
            return Some(format!(
                "write-ahead log frame {} of {} fails its checksum, and SQLite would silently \
                 drop the committed frames after it",
                bad + 1,
                frames.len()
            ));
        }
    }
    None
}

/// What [`repair`] did.
#[derive(Debug, Default)]
pub struct Repair {
    /// Where the damaged files were moved (or copied) to; `None` when nothing was damaged.
    pub kept_in: Option<PathBuf>,
    /// Whether the database could be kept (a damaged WAL past its valid prefix) or had to be
    /// replaced by a fresh, empty one.
    pub salvaged: bool,
}

/// `serve --repair`: keep a copy of every damaged file in `DIR/damaged-<unix seconds>/`, then
/// keep what SQLite can still read (the database and the WAL's valid prefix) or, when the
/// database itself is unreadable, move it aside so the next open starts an empty store.
pub fn repair(dir: &Path) -> Result<Repair, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let _lock = DirLock::acquire(dir)?;
    let damage = match check_files(dir) {
        Ok(()) => readable(dir).err(),
        Err(e @ StoreError::Damaged { .. }) => Some(e),
        Err(e) => return Err(e),
    };
    let Some(damage) = damage else {
        return Ok(Repair::default());
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let kept = dir.join(format!("damaged-{stamp}"));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    std::fs::create_dir_all(&kept).map_err(io(&kept))?;
    for name in [DB_FILE, WAL_FILE, SHM_FILE] {
        let from = dir.join(name);
        if from.exists() {
            std::fs::copy(&from, kept.join(name)).map_err(io(&from))?;
        }
    }
    tracing::warn!(damage = %damage, kept = %kept.display(), "repairing the store");
    // The WAL's valid prefix is what SQLite recovers on open; checkpoint it into the database
    // and drop the unreadable rest, so the next start passes the check.
    if let StoreError::Damaged { file, .. } = &damage {
        if file.ends_with(WAL_FILE) && salvage(dir).is_ok() {
            return Ok(Repair {
                kept_in: Some(kept),
                salvaged: true,
            });
        }
    }
    for name in [DB_FILE, WAL_FILE, SHM_FILE] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
            _ => {}
        }
    }
    Ok(Repair {
        kept_in: Some(kept),
        salvaged: false,
    })
}

fn salvage(dir: &Path) -> Result<(), StoreError> {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    readable(dir)
}

/// SQLite's own word that the database is not one (garbage, a damaged header) is damage too.
pub fn damaged_if_corrupt(dir: &Path, e: StoreError) -> StoreError {
    match &e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            StoreError::Damaged {
                file: dir.join(DB_FILE),
                what: e.to_string(),
            }
        }
        _ => e,
    }
}

/// Whether SQLite itself finds the database sound (`PRAGMA quick_check`).
pub fn readable(dir: &Path) -> Result<(), StoreError> {
    let db = dir.join(DB_FILE);
    if !db.exists() {
        return Ok(());
    }
    let damaged = |what: String| StoreError::Damaged {
        file: db.clone(),
        what,
    };
    let conn = rusqlite::Connection::open(&db).map_err(|e| damaged(e.to_string()))?;
    quick_check(&conn).map_err(damaged)
}

/// `PRAGMA quick_check`: `Err` with SQLite's first complaint when the database is not sound.
pub fn quick_check(conn: &rusqlite::Connection) -> Result<(), String> {
    let first: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if first == "ok" { Ok(()) } else { Err(first) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path()).unwrap();
        match DirLock::acquire(dir.path()) {
            Err(StoreError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn an_empty_database_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
        assert!(matches!(
            check_files(dir.path()),
            Err(StoreError::Damaged { file, .. }) if file.ends_with(DB_FILE)
        ));
    }

    #[test]
    fn wal_checksums_tell_a_torn_tail_from_lost_commits() {
        // A real WAL: several committed transactions, the connection left open (no checkpoint).
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        for _ in 0..6 {
            conn.execute("INSERT INTO t VALUES (zeroblob(3000))", [])
                .unwrap();
        }
        let wal = std::fs::read(dir.path().join(WAL_FILE)).unwrap();
        assert_eq!(wal_damage(&wal), None, "an intact WAL");
        let page = be32(&wal, 8) as usize;
        let frames = (wal.len() - WAL_HEADER) / (FRAME_HEADER + page);
        assert!(frames >= 6, "{frames} frames");
        // Torn tail: the last frame's page damaged, nothing valid after it.
        let mut torn = wal.clone();
        let last = torn.len() - 10;
        torn[last] ^= 0xff;
        assert_eq!(
            wal_damage(&torn),
            None,
            "a torn final frame is a normal crash"
        );
        // A flipped byte in the second frame: the frames after it are committed writes.
        let mut flipped = wal.clone();
        flipped[WAL_HEADER + FRAME_HEADER + page + FRAME_HEADER + 100] ^= 0xff;
        let what = wal_damage(&flipped).expect("damage found");
        assert!(what.contains("frame 2 of"), "{what}");
        let mut header = wal;
        header[12] ^= 1;
        assert!(wal_damage(&header).unwrap().contains("header"));
    }
}
