//! The JSON-lines sink: one record a line, appended; the file is renamed
//! `<file>.<UTC timestamp>` and a new one started by day or by size. Runs
//! on its own thread (file I/O blocks), fed by a bounded queue.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{error, warn};

use super::metrics::CdrMetrics;
use super::record::rfc3339;
use crate::config::CdrRotation;

/// Records waiting for the file.
const QUEUE: usize = 4096;

/// Whether the file must be rotated before a line of `line` bytes is
/// written: it holds `size` bytes, was started on UTC day `opened_day`,
/// and today is `today`. An empty file is never rotated.
pub fn must_rotate(
    rotate: CdrRotation,
    max_bytes: u64,
    size: u64,
    line: u64,
    opened_day: u64,
    today: u64,
) -> bool {
    size > 0
        && match rotate {
            CdrRotation::Daily => today != opened_day,
            CdrRotation::Size => size + line > max_bytes,
            CdrRotation::Never => false,
        }
}

/// The name a rotated file gets: `cdr.jsonl.20261202T230405.123Z`.
pub fn rotated_name(path: &Path, now: SystemTime) -> PathBuf {
    let stamp: String = rfc3339(now)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(stamp);
    PathBuf::from(name)
}

fn day(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400
}

/// The file and what rotation needs to know about it.
pub struct JsonLines {
    path: PathBuf,
    file: File,
    size: u64,
    opened_day: u64,
    rotate: CdrRotation,
    max_bytes: u64,
}

impl JsonLines {
    pub fn open(path: &Path, rotate: CdrRotation, max_bytes: u64) -> io::Result<JsonLines> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        let opened = meta.modified().unwrap_or_else(|_| SystemTime::now());
        Ok(JsonLines {
            path: path.to_path_buf(),
            size: meta.len(),
            opened_day: day(opened),
            file,
            rotate,
            max_bytes,
        })
    }

    /// Appends `line` (and a newline), rotating first if it is time.
    pub fn write(&mut self, now: SystemTime, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        let today = day(now);
        if must_rotate(
            self.rotate,
            self.max_bytes,
            self.size,
            len,
            self.opened_day,
            today,
        ) {
            let mut to = rotated_name(&self.path, now);
            let mut n = 1;
            while to.exists() {
                to = rotated_name(&self.path, now);
                to.as_mut_os_string().push(format!("-{n}"));
                n += 1;
            }
            fs::rename(&self.path, &to)?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        if self.size == 0 {
            self.opened_day = today;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.size += len;
        Ok(())
    }
}

/// What the file's thread is given.
pub enum Line {
    /// A record's JSON.
    Record(String),
    /// Answered once every line queued before is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Starts the file's thread; records are queued on what it returns.
pub fn start(mut sink: JsonLines, metrics: Arc<CdrMetrics>) -> io::Result<SyncSender<Line>> {
    let (tx, rx): (SyncSender<Line>, Receiver<Line>) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("gangway-cdr-file".into())
        .spawn(move || {
            for line in rx {
                let line = match line {
                    Line::Record(line) => line,
                    Line::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                match sink.write(SystemTime::now(), &line) {
                    Ok(()) => metrics.written("file"),
                    Err(e) => {
                        metrics.failed("file");
                        error!(path = %sink.path.display(), "cannot write call record: {e}");
                    }
                }
            }
        })?;
    Ok(tx)
}

/// Queues a line without waiting; a full queue drops it (counted, logged).
pub fn queue(tx: &SyncSender<Line>, line: Line, metrics: &CdrMetrics) {
    if tx.try_send(line).is_err() {
        metrics.dropped("file");
        warn!("call records file queue full: record dropped");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rotation_by_day_and_by_size() {
        use CdrRotation::*;
        assert!(!must_rotate(Daily, 0, 10, 5, 100, 100));
        assert!(must_rotate(Daily, 0, 10, 5, 100, 101));
        assert!(
            !must_rotate(Daily, 0, 0, 5, 100, 101),
            "an empty file stays"
        );
        assert!(!must_rotate(Size, 100, 90, 10, 0, 0));
        assert!(must_rotate(Size, 100, 91, 10, 0, 0));
        assert!(!must_rotate(Never, 100, 1000, 10, 0, 9));
    }

    #[test]
    fn a_full_file_is_renamed_with_a_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let mut f = JsonLines::open(&path, CdrRotation::Size, 30).unwrap();
        let t = UNIX_EPOCH + Duration::from_millis(1_796_252_400_123);
        f.write(t, "{\"a\":1}").unwrap();
        f.write(t, "{\"a\":2}").unwrap();
        f.write(t, "{\"a\":3}").unwrap();
        f.write(t, "{\"a\":4}").unwrap();
        let old = dir.path().join("cdr.jsonl.20261202T230000.123Z");
        assert_eq!(
            fs::read_to_string(&old).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":4}\n");
        // The same instant again: a suffix, nothing overwritten.
        for _ in 0..3 {
            f.write(t, "{\"a\":5}").unwrap();
        }
        assert!(dir.path().join("cdr.jsonl.20261202T230000.123Z-1").exists());
    }

    #[test]
    fn a_new_day_starts_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let mut f = JsonLines::open(&path, CdrRotation::Daily, 0).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_796_252_400);
        f.write(t, "x").unwrap();
        f.write(t + Duration::from_secs(3599), "y").unwrap();
        f.write(t + Duration::from_secs(3600), "z").unwrap();
        let old = dir.path().join("cdr.jsonl.20261203T000000.000Z");
        assert_eq!(fs::read_to_string(old).unwrap(), "x\ny\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "z\n");
    }
}
