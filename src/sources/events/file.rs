//! Tails WebSocket event logs (JSON lines): follows appends, survives rotation by
//! rename-and-create and by copytruncate, and resumes from a checkpointed offset.
//!
//! Exactly once: a batch of complete lines is submitted together with the offset just past its
//! last line, and the engine commits both in one transaction; the tail advances only after that
//! commit. A partial last line waits for its newline. An over-long line is skipped as it is read,
//! never held whole. One blocking thread per file; a full ingest queue pauses the tail.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::lines::{Cut, LineCutter, numbered};
use crate::config::StartAt;
use crate::correlate::Received;
use crate::normalize::events::observe_event_line;
use crate::normalize::{RejectReason, Tally};
use crate::pipeline::{Batch, IngestHandle};
use crate::reload::SharedExtractor;
use crate::sources::count_tally;
use crate::store::FileCheckpoint;
use crate::telemetry::metrics::Metrics;

const SOURCE: &str = "events_file";
const READ_CHUNK: usize = 64 * 1024;
/// Lines per batch at most.
const BATCH_LINES: usize = 2048;

/// Everything one tailer needs.
pub struct Tailer {
    pub path: PathBuf,
    pub start_at: StartAt,
    pub poll: Duration,
    pub checkpoint: Option<FileCheckpoint>,
    /// Swapped whole when a reload changes the watches.
    pub extractor: SharedExtractor,
    pub ingest: IngestHandle,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

struct OpenFile {
    file: File,
    dev: u64,
    ino: u64,
    /// Offset of the first byte not yet committed (where the cutter's unfinished line starts).
    committed: u64,
    /// Holds what was read past `committed` but does not yet end in a newline.
    cutter: LineCutter,
}

impl OpenFile {
    fn open(path: &Path, offset: u64) -> std::io::Result<Self> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        let offset = if offset > meta.len() { 0 } else { offset };
        file.seek(SeekFrom::Start(offset))?;
        Ok(OpenFile {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            committed: offset,
            cutter: LineCutter::default(),
        })
    }
}

impl Tailer {
    /// Run until shutdown. Call on a dedicated thread.
    pub fn run(mut self) {
        let mut current: Option<OpenFile> = None;
        let mut first_open = true;
        while !self.shutdown.is_cancelled() {
            let Some(open) = current.as_mut() else {
                current = self.open_initial(first_open);
                if current.is_some() {
                    first_open = false;
                } else {
                    std::thread::sleep(self.poll);
                }
                continue;
            };
            match self.drain(open) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "reading event log failed");
                    current = None;
                    std::thread::sleep(self.poll);
                    continue;
                }
            }
            // At end of file: has the file been rotated or truncated under us?
            match std::fs::metadata(&self.path) {
                Ok(meta) if meta.dev() != open.dev || meta.ino() != open.ino => {
                    // Renamed away and re-created: finish the old file, then start the new one.
                    if matches!(self.drain(open), Ok(false)) {
                        tracing::info!(path = %self.path.display(), "event log rotated; following the new file");
                        current = OpenFile::open(&self.path, 0).ok();
                        continue;
                    }
                }
                Ok(meta) if meta.len() < Self::position(open) => {
                    tracing::info!(path = %self.path.display(), "event log truncated; reading from its start");
                    current = OpenFile::open(&self.path, 0).ok();
                    continue;
                }
                _ => {}
            }
            std::thread::sleep(self.poll);
        }
    }

    /// The first open: from the checkpoint when it still names this file; from a rotated-away
    /// file with the checkpointed inode when one sits beside it; else per `start_at`.
    fn open_initial(&mut self, first: bool) -> Option<OpenFile> {
        let meta = std::fs::metadata(&self.path).ok()?;
        if let Some(c) = self.checkpoint.take() {
            if c.dev == meta.dev() && c.ino == meta.ino() {
                return OpenFile::open(&self.path, c.offset).ok();
            }
            if let Some(old) = find_by_inode(&self.path, c.dev, c.ino) {
                tracing::info!(path = %old.display(), "finishing a rotated event log first");
                if let Ok(mut open) = OpenFile::open(&old, c.offset) {
                    // Drain the old file to its end; its lines count under this path's checkpoint.
                    while let Ok(true) = self.drain(&mut open) {}
                }
            }
            return OpenFile::open(&self.path, 0).ok();
        }
        let offset = match (first, self.start_at) {
            (true, StartAt::End) => meta.len(),
            _ => 0,
        };
        OpenFile::open(&self.path, offset).ok()
    }

    /// Read what is there and submit complete lines. Ok(true) while more may be waiting.
    fn drain(&self, open: &mut OpenFile) -> std::io::Result<bool> {
        let extractor = self.extractor.current();
        let max_line = extractor.max_line_bytes;
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut cut = Cut::default();
        let mut eof = false;
        while cut.lines.len() < BATCH_LINES {
            let n = open.file.read(&mut chunk)?;
            if n == 0 {
                eof = true;
                break;
            }
            open.cutter.feed(&chunk[..n], max_line, &mut cut);
        }
        let received = Received::now();
        let mut observations = Vec::with_capacity(cut.lines.len());
        let mut tally = Tally::default();
        for (_, text) in numbered(cut.lines.iter().map(Vec::as_slice)) {
            tally.items += 1;
            match observe_event_line(text, &extractor, received.wall_ns, &mut tally) {
                Ok(obs) => observations.push(obs),
                Err(r) => tally.reject(r.reason, || r.message),
            }
        }
        // Skipped as they were read: items too, each rejected.
        if cut.too_long > 0 {
            tally.items += cut.too_long;
            *tally.rejected.entry(RejectReason::LineTooLong).or_default() += cut.too_long;
        }
        let accepted = tally.accepted();
        count_tally(&self.metrics, SOURCE, &tally);
        if cut.consumed > 0 {
            let checkpoint = FileCheckpoint {
                path: self.path.to_string_lossy().into_owned(),
                dev: open.dev,
                ino: open.ino,
                offset: open.committed + cut.consumed,
            };
            self.submit(observations, received, accepted, checkpoint)?;
            open.committed += cut.consumed;
        }
        Ok(!eof)
    }

    /// The file position: committed, plus what is read but not yet part of a complete line.
    fn position(open: &OpenFile) -> u64 {
        open.committed + open.cutter.buffered()
    }

    /// Submit and wait until durable, retrying a failed commit; the tail does not move on.
    fn submit(
        &self,
        observations: Vec<crate::normalize::Observation>,
        received: Received,
        accepted: u64,
        checkpoint: FileCheckpoint,
    ) -> std::io::Result<()> {
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let batch = Batch {
                observations: observations.clone(),
                received,
                signal: "events",
                transport: "file",
                items: accepted,
                checkpoint: Some(checkpoint.clone()),
                ack: Some(tx),
            };
            if self.ingest.submit(batch).is_err() {
                return Err(std::io::Error::other("engine stopped"));
            }
            match rx.blocking_recv() {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "event batch not committed; retrying");
                    std::thread::sleep(self.poll);
                }
                Err(_) => return Err(std::io::Error::other("engine stopped")),
            }
            if self.shutdown.is_cancelled() {
                return Err(std::io::Error::other("shutting down"));
            }
        }
    }
}

/// A file beside `path` with the given device and inode (`app.log` renamed to `app.log.1`).
fn find_by_inode(path: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let meta = entry.metadata().ok()?;
        (meta.dev() == dev && meta.ino() == ino).then(|| entry.path())
    })
}
