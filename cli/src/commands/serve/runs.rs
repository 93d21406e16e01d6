//! The run folders `chainrule serve` may read: only regular files under its runs folder,
//! found by resolving the path (symbolic links included) before anything is opened.

use serde::Serialize;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

/// Largest file served whole (metrics logs of long runs are read in pieces instead).
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// Largest piece of a metrics log returned by one request.
pub const MAX_CHUNK_BYTES: u64 = 4 << 20;

/// Files of a run folder the page draws.
pub const KNOWN_FILES: &[&str] = &[
    "metrics.jsonl",
    "report.json",
    "curves.svg",
    "clipping.json",
    "clipping.svg",
    "compare.json",
    "compare.svg",
    "curvature.json",
];

/// The runs folder (resolved at each request: it may appear after the server started).
#[derive(Clone, Debug)]
pub struct Runs {
    dir: PathBuf,
}

/// One run folder in the list.
#[derive(Debug, Serialize)]
pub struct RunEntry {
    /// The folder's name.
    pub name: String,
    /// Seconds since the Unix epoch of the last change to any known file.
    pub modified: f64,
    /// The known files it holds.
    pub files: Vec<&'static str>,
    /// `finished` (report.json written), `training` (metrics written in the last
    /// minute) or `stopped`.
    pub status: &'static str,
}

/// A piece of a metrics log: its complete lines from a byte offset on.
#[derive(Debug, Serialize)]
pub struct MetricsChunk {
    /// The rows that parse as JSON objects.
    pub rows: Vec<serde_json::Value>,
    /// The offset to ask from next: the end of the last complete line read.
    pub next: u64,
    /// True when the file is shorter than the offset asked for (a new run started in the
    /// folder): the page starts over from 0.
    pub reset: bool,
    /// True when more complete lines follow (the piece was cut at its size limit).
    pub more: bool,
}

fn secs(t: std::io::Result<SystemTime>) -> f64 {
    t.ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Runs {
    /// The runs under `dir`; a folder that does not exist (yet) lists no runs.
    pub fn new(dir: &Path) -> Self {
        Runs {
            dir: dir.to_path_buf(),
        }
    }

    /// The folder's real path, or `None` while it does not exist.
    fn root(&self) -> Option<PathBuf> {
        std::fs::canonicalize(&self.dir).ok()
    }

    /// The file at `rel` under the runs folder, or `None` when `rel` is empty, absolute,
    /// has a `..`, `.` or hidden component, or resolves (through links) outside the
    /// folder, or is not a regular file. Nothing is opened before this check.
    pub fn resolve(&self, rel: &str) -> Option<PathBuf> {
        let root = self.root()?;
        let rel_path = Path::new(rel);
        if rel.is_empty() || rel.contains('\\') || rel.contains('\0') {
            return None;
        }
        for c in rel_path.components() {
            match c {
                Component::Normal(part) if !part.to_string_lossy().starts_with('.') => {}
                _ => return None,
            }
        }
        let real = std::fs::canonicalize(root.join(rel_path)).ok()?;
        if !real.starts_with(&root) || real == root {
            return None;
        }
        Some(real)
    }

    /// The regular file at `rel`, read whole (at most [`MAX_FILE_BYTES`]).
    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        let path = self.resolve(rel)?;
        let meta = std::fs::metadata(&path).ok()?;
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            return None;
        }
        let mut out = Vec::new();
        std::fs::File::open(&path)
            .ok()?
            .take(MAX_FILE_BYTES)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    }

    /// The run folder `name` (one component), resolved as [`Runs::resolve`] does.
    fn run_dir(&self, name: &str) -> Option<PathBuf> {
        if name.contains('/') {
            return None;
        }
        let dir = self.resolve(name)?;
        dir.is_dir().then_some(dir)
    }

    /// The run folders: direct subfolders holding at least one known file, newest first.
    pub fn list(&self) -> Vec<RunEntry> {
        let Some(root) = self.root() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Vec::new();
        };
        let now = secs(Ok(SystemTime::now()));
        let mut out: Vec<RunEntry> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let dir = self.run_dir(&name)?;
                let mut files = Vec::new();
                let mut modified: f64 = 0.0;
                let mut metrics_modified = 0.0;
                for f in KNOWN_FILES {
                    let p = dir.join(f);
                    // a known file that is a link out of the folder does not count
                    if self.resolve(&format!("{name}/{f}")).is_none() {
                        continue;
                    }
                    if let Ok(m) = std::fs::metadata(&p)
                        && m.is_file()
                    {
                        let t = secs(m.modified());
                        modified = modified.max(t);
                        if *f == "metrics.jsonl" {
                            metrics_modified = t;
                        }
                        files.push(*f);
                    }
                }
                if files.is_empty() {
                    return None;
                }
                let done = [
                    "report.json",
                    "clipping.json",
                    "compare.json",
                    "compare.svg",
                ];
                let status = if files.iter().any(|f| done.contains(f)) {
                    "finished"
                } else if now - metrics_modified < 60.0 {
                    "training"
                } else {
                    "stopped"
                };
                Some(RunEntry {
                    name,
                    modified,
                    files,
                    status,
                })
            })
            .collect();
        out.sort_by(|a, b| b.modified.total_cmp(&a.modified).then(a.name.cmp(&b.name)));
        out
    }

    /// The complete lines of run `name`'s metrics.jsonl from byte `from` on (a torn last
    /// line is left for the next request); `None` when the run or its log is not there.
    pub fn metrics(&self, name: &str, from: u64) -> Option<MetricsChunk> {
        self.run_dir(name)?;
        let path = self.resolve(&format!("{name}/metrics.jsonl"))?;
        let mut file = std::fs::File::open(&path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let len = meta.len();
        if from > len {
            return Some(MetricsChunk {
                rows: Vec::new(),
                next: 0,
                reset: true,
                more: false,
            });
        }
        file.seek(SeekFrom::Start(from)).ok()?;
        let mut buf = Vec::new();
        file.take(MAX_CHUNK_BYTES).read_to_end(&mut buf).ok()?;
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let rows = buf[..complete]
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .filter(serde_json::Value::is_object)
            .collect();
        Some(MetricsChunk {
            rows,
            next: from + complete as u64,
            reset: false,
            more: from + (complete as u64) < len && buf.len() as u64 == MAX_CHUNK_BYTES,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("chainrule-runs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("runs/a")).unwrap();
        d
    }

    #[test]
    fn only_files_inside_resolve() {
        let d = folder("resolve");
        std::fs::write(d.join("runs/a/metrics.jsonl"), "{}\n").unwrap();
        std::fs::write(d.join("secret.txt"), "secret").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(d.join("secret.txt"), d.join("runs/a/out.json")).unwrap();
        let runs = Runs::new(&d.join("runs"));
        assert!(runs.resolve("a/metrics.jsonl").is_some());
        for bad in [
            "",
            "../secret.txt",
            "a/../../secret.txt",
            "/etc/passwd",
            "a/out.json",
            "a\\metrics.jsonl",
            ".hidden",
        ] {
            assert!(runs.resolve(bad).is_none(), "{bad:?} resolved");
        }
        assert!(runs.read("a").is_none(), "a folder is not a file");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_last_line_waits_for_its_end() {
        let d = folder("torn");
        let log = d.join("runs/a/metrics.jsonl");
        std::fs::write(&log, "{\"step\":1}\n{\"step\":2}\n{\"st").unwrap();
        let runs = Runs::new(&d.join("runs"));
        let c = runs.metrics("a", 0).unwrap();
        assert_eq!(c.rows.len(), 2);
        assert_eq!(c.next, 22);
        std::fs::write(&log, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n").unwrap();
        let c = runs.metrics("a", c.next).unwrap();
        assert_eq!(c.rows, vec![serde_json::json!({"step": 3})]);
        // a new, shorter log: start over
        std::fs::write(&log, "").unwrap();
        assert!(runs.metrics("a", c.next).unwrap().reset);
        assert_eq!(runs.list()[0].name, "a");
        assert!(runs.metrics("../runs/a", 0).is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
