//! Online backup and offline restore.
//!
//! `POST /_myelin/admin/backup` (an admin's token) answers a consistent snapshot of the
//! running server as a sequence of files, each framed as a big-endian u16 name length,
//! the name, a u64 byte length and the bytes: the database ([`DATABASE_FILE`], see
//! `storage::snapshot`, taken while writers wait) and the signing and LiveKit keys.
//! `myelin backup DIR` unpacks them into `DIR` and writes [`MANIFEST_FILE`] last;
//! `myelin restore DIR --data-dir NEW` builds a new data dir from them. Media files are
//! not part of it: they are content-addressed and never change once written, so copying
//! `<data_dir>/media` with rsync (before or after) is safe.

use std::{
    fs::{File, OpenOptions},
    io::{BufReader, BufWriter, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use rand::{distributions::Alphanumeric, Rng};

use crate::{storage::Storage, Error, Result};

/// The database snapshot's file in a backup.
pub const DATABASE_FILE: &str = "database.snapshot";
/// Written last by `myelin backup`: a backup without it is incomplete.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The key files of the data dir a backup carries (those that exist).
pub const KEY_FILES: [&str; 2] = [crate::events::keys::KEY_FILE, crate::rtc::keys::KEY_FILE];

/// One file of a backup, open for reading from its start.
pub struct BackupPart {
    /// Its name in the backup directory.
    pub name: &'static str,
    /// The open file.
    pub file: File,
    /// Its length in bytes.
    pub len: u64,
}

/// Takes a snapshot of the running server: the database dumped into an unlinked file
/// under the data dir (nothing is left behind, even after a crash), and the key files.
pub async fn take(storage: Arc<Storage>, data_dir: PathBuf) -> Result<Vec<BackupPart>> {
    // What was acknowledged is durable already; this makes the rest durable too.
    storage.durable().await?;
    tokio::task::spawn_blocking(move || {
        let tmp_dir = data_dir.join("backup-tmp");
        std::fs::create_dir_all(&tmp_dir)?;
        let name: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(16)
            .map(char::from)
            .collect();
        let path = tmp_dir.join(format!("snapshot-{name}"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Unix keeps an unlinked file readable through the open handle.
        let _ = std::fs::remove_file(&path);
        let pairs = {
            let mut out = BufWriter::new(&mut file);
            storage.write_snapshot(&mut out)?
        };
        let len = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        tracing::info!(pairs, bytes = len, "database snapshot taken for a backup");
        let mut parts = vec![BackupPart {
            name: DATABASE_FILE,
            file,
            len,
        }];
        for name in KEY_FILES {
            match File::open(data_dir.join(name)) {
                Ok(file) => {
                    let len = file.metadata()?.len();
                    parts.push(BackupPart { name, file, len });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(parts)
    })
    .await
    .map_err(|e| Error::internal(format!("backup task: {e}")))?
}

/// The frame header preceding a file's bytes in the backup stream.
pub fn frame_header(name: &str, len: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(2 + name.len() + 8);
    header.extend_from_slice(&(name.len() as u16).to_be_bytes());
    header.extend_from_slice(name.as_bytes());
    header.extend_from_slice(&len.to_be_bytes());
    header
}

/// Unpacks a backup stream into `dir` (each file synced); returns the names and sizes.
/// Only the known file names are accepted.
pub fn unpack(input: &mut dyn Read, dir: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    loop {
        let mut len = [0; 2];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !files.is_empty() => {
                return Ok(files)
            }
            Err(e) => return Err(e).context("reading the backup stream"),
        }
        let mut name = vec![0; u16::from_be_bytes(len) as usize];
        input.read_exact(&mut name)?;
        let name = String::from_utf8(name).context("file name in the backup stream")?;
        if name != DATABASE_FILE && !KEY_FILES.contains(&name.as_str()) {
            anyhow::bail!("unexpected file {name:?} in the backup stream");
        }
        let mut size = [0; 8];
        input.read_exact(&mut size)?;
        let size = u64::from_be_bytes(size);
        let mut out = File::create(dir.join(&name))?;
        let copied = std::io::copy(&mut input.take(size), &mut out)?;
        if copied != size {
            anyhow::bail!("the backup stream ended inside {name} ({copied} of {size} bytes)");
        }
        out.sync_all()?;
        files.push((name, size));
    }
}

/// Builds the data dir `data_dir` (absent or empty) from the backup in `dir`; returns
/// the number of database pairs restored.
pub fn restore(dir: &Path, data_dir: &Path) -> anyhow::Result<u64> {
    if !dir.join(MANIFEST_FILE).exists() {
        anyhow::bail!(
            "{} has no {MANIFEST_FILE}: not a complete backup",
            dir.display()
        );
    }
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .with_context(|| format!("reading {}", data_dir.display()))?
            .next()
            .is_some()
    {
        anyhow::bail!(
            "{} is not empty: restore only into a new data dir",
            data_dir.display()
        );
    }
    let snapshot = File::open(dir.join(DATABASE_FILE))
        .with_context(|| format!("opening {}", dir.join(DATABASE_FILE).display()))?;
    let pairs = Storage::restore_snapshot(data_dir, &mut BufReader::new(snapshot))?;
    for name in KEY_FILES {
        let from = dir.join(name);
        if from.exists() {
            let to = data_dir.join(name);
            std::fs::copy(&from, &to)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
            }
            File::open(&to)?.sync_all()?;
        }
    }
    Ok(pairs)
}

/// Flushes a directory's entries (new files) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_unpack_into_their_files_and_foreign_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = frame_header(DATABASE_FILE, 3);
        stream.extend_from_slice(b"abc");
        stream.extend(frame_header("signing.key", 2));
        stream.extend_from_slice(b"kk");
        let files = unpack(&mut stream.as_slice(), dir.path()).unwrap();
        assert_eq!(
            files,
            vec![(DATABASE_FILE.to_owned(), 3), ("signing.key".to_owned(), 2)]
        );
        assert_eq!(
            std::fs::read(dir.path().join(DATABASE_FILE)).unwrap(),
            b"abc"
        );

        let mut evil = frame_header("../escape", 1);
        evil.push(b'x');
        assert!(unpack(&mut evil.as_slice(), dir.path()).is_err());
        let mut short = frame_header(DATABASE_FILE, 10);
        short.extend_from_slice(b"abc");
        assert!(unpack(&mut short.as_slice(), dir.path()).is_err());
    }
}
