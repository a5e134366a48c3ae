//! The operator token: a random admin token `myelin serve` writes at each start to
//! `<data_dir>/admin_token` (mode 0600), so that whoever can read the data dir (the
//! `myelin user …` commands on the same machine) may use the admin API of the running
//! server before any administrator account exists. Only its hash is kept, in memory: a
//! restart replaces it, and it is accepted on the admin API only, never as a user's
//! access token. Processes sharing a database (and its data dir) keep the hash in the
//! database instead: each start replaces the file's token and every process accepts the
//! newest, so the file works whichever process a request reaches.

use std::{io::Write, path::Path};

use rand::{distributions::Alphanumeric, Rng};

use super::{token_key, UsersService};
use crate::{Error, Result};

/// The file, in the data dir, that holds the operator token.
pub const OPERATOR_TOKEN_FILE: &str = "admin_token";

/// Key of the newest operator token's hash in the `meta` tree (shared databases only).
const OPERATOR_TOKEN_KEY: &[u8] = b"operator_token";

impl UsersService {
    /// Generates a new operator token, writes it to `<data_dir>/admin_token` readable by
    /// the owner only, and accepts it from now on (only the first call takes effect).
    pub fn install_operator_token(&self, data_dir: &Path) -> Result<()> {
        let token: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(48)
            .map(char::from)
            .collect();
        let token = format!("myl_admin_{token}");
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(OPERATOR_TOKEN_FILE);
        // Written beside and renamed over: a reader never sees half a token, and the
        // file never exists with wider permissions.
        let partial = data_dir.join(format!("{OPERATOR_TOKEN_FILE}.new"));
        let _ = std::fs::remove_file(&partial);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&partial)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        if self.storage.is_shared() {
            // Committed before the file names the token.
            self.storage
                .trees
                .meta
                .insert(OPERATOR_TOKEN_KEY, &token_key(&token))?;
            self.storage.flush()?;
        }
        std::fs::rename(&partial, &path)?;
        self.operator_token
            .set(token_key(&token))
            .map_err(|_| Error::internal("operator token already installed"))
    }

    /// Whether `token` is this run's operator token (with a shared database: the newest
    /// one any of its processes installed).
    pub fn is_operator_token(&self, token: &str) -> bool {
        if self.operator_token.get().is_none() {
            return false;
        }
        let hash = if self.storage.is_shared() {
            match self.storage.trees.meta.get(OPERATOR_TOKEN_KEY) {
                Ok(Some(hash)) => hash,
                Ok(None) => return false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the operator token");
                    return false;
                }
            }
        } else {
            self.operator_token.get().cloned().unwrap_or_default()
        };
        hash == token_key(token)
    }
}

#[cfg(test)]
mod tests {
    use crate::users::test_support::service;

    #[test]
    fn the_written_token_is_accepted_and_private() {
        let s = service();
        let dir = tempfile::tempdir().unwrap();
        assert!(!s.is_operator_token(""));
        s.install_operator_token(dir.path()).unwrap();
        let path = dir.path().join(super::OPERATOR_TOKEN_FILE);
        let token = std::fs::read_to_string(&path).unwrap();
        assert!(s.is_operator_token(token.trim()));
        assert!(!s.is_operator_token("myl_admin_guess"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            s.authenticate(token.trim()).is_err(),
            "not a user's access token"
        );
    }
}
