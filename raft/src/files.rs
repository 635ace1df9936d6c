//! Small file helpers shared by the log, the vote and the snapshot: the directory lock, CRC'd
//! state files written atomically, and the error type that names a file and what is wrong.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A storage problem found while opening or writing `<data_dir>/raft/`: which file, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file (or directory) concerned.
    pub path: PathBuf,
    /// What is wrong with it, in words.
    pub what: String,
}

impl FileError {
    pub(crate) fn new(path: &Path, what: impl Into<String>) -> FileError {
        FileError {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn io(path: &Path, doing: &str, e: &io::Error) -> FileError {
        FileError::new(path, format!("{doing}: {e}"))
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for FileError {}

/// An exclusive `flock` on `<dir>/LOCK`, held as long as this value lives, so that two
/// processes never share one Raft directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock, or fails at once naming the directory when another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, FileError> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| FileError::io(&path, "cannot open the lock file", &e))?;
        flock_exclusive_nonblocking(&file).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                FileError::new(
                    dir,
                    "the Raft directory is locked by another process (two nodes must not share a data directory)",
                )
            } else {
                FileError::io(&path, "cannot lock", &e)
            }
        })?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[allow(unsafe_code)]
fn flock_exclusive_nonblocking(file: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own and keep open for the call; no memory is
    // shared with the kernel. The lock is released when the descriptor is closed (drop).
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The identity file `<dir>/NODE`: which Raft node wrote this directory. A directory is one
/// node's for good — its vote and log are promises that node made — so a node started on a
/// directory another id wrote (its address changed, or a standalone node's data started as a
/// cluster member) is refused, naming both ids, rather than let it vote twice in a term or
/// sit in a group nobody else knows. Written once, when missing.
pub(crate) fn check_identity(dir: &Path, id: u64) -> Result<(), FileError> {
    let path = dir.join("NODE");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let stored = text
                .trim()
                .strip_prefix("raft node ")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| FileError::new(&path, format!("not an identity file: {text:?}")))?;
            if stored != id {
                return Err(FileError::new(
                    &path,
                    format!(
                        "this Raft directory belongs to node {stored}, not to this node ({id}): a member's data cannot change identity (its address changed, or a standalone node's data was started as a cluster member); start this node on an empty data directory to join the group (it copies the data from the group), or give it its old address"
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_atomic(&path, format!("raft node {id}\n").as_bytes())
        }
        Err(e) => Err(FileError::io(&path, "cannot read", &e)),
    }
}

/// fsyncs a directory, so that a rename or a new file in it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::io(dir, "cannot fsync the directory", &e))
}

/// Creates `dir` (and parents) when missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), FileError> {
    fs::create_dir_all(dir).map_err(|e| FileError::io(dir, "cannot create the directory", &e))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let tmp = tmp_path(path);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    };
    write().map_err(|e| FileError::io(&tmp, "cannot write", &e))?;
    fs::rename(&tmp, path).map_err(|e| FileError::io(path, "cannot rename into place", &e))?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Header of a CRC'd state file: 8 magic bytes, payload length (u32 LE), CRC32 of the payload.
const STATE_HEADER: usize = 16;

/// Encodes a state file (vote, purged id): `magic`, length, CRC32, postcard payload.
pub(crate) fn encode_state<T: serde::Serialize>(
    magic: &[u8; 8],
    value: &T,
) -> Result<Vec<u8>, postcard::Error> {
    let payload = postcard::to_stdvec(value)?;
    let mut out = Vec::with_capacity(STATE_HEADER + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads a state file written by [`write_atomic`] + [`encode_state`]: `Ok(None)` when it does
/// not exist, an error naming the file for anything unreadable.
pub(crate) fn read_state<T: serde::de::DeserializeOwned>(
    path: &Path,
    magic: &[u8; 8],
) -> Result<Option<T>, FileError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::io(path, "cannot read", &e)),
    };
    decode_state(path, magic, &bytes).map(Some)
}

pub(crate) fn decode_state<T: serde::de::DeserializeOwned>(
    path: &Path,
    magic: &[u8; 8],
    bytes: &[u8],
) -> Result<T, FileError> {
    if bytes.len() < STATE_HEADER {
        return Err(FileError::new(
            path,
            format!("truncated: {} bytes, shorter than its header", bytes.len()),
        ));
    }
    if &bytes[..8] != magic {
        return Err(FileError::new(
            path,
            "bad header (not a Nacelle Raft file of this kind)",
        ));
    }
    let len = u32_at(bytes, 8) as usize;
    let crc = u32_at(bytes, 12);
    let payload = &bytes[STATE_HEADER..];
    if payload.len() != len {
        return Err(FileError::new(
            path,
            format!(
                "length mismatch: header says {len} bytes, file holds {}",
                payload.len()
            ),
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err(FileError::new(path, "CRC mismatch"));
    }
    postcard::from_bytes(payload)
        .map_err(|e| FileError::new(path, format!("undecodable contents: {e}")))
}

/// The little-endian u32 at `at` (the caller checked the length).
pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The little-endian u64 at `at` (the caller checked the length).
pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}
