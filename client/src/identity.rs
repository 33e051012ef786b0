//! The user's long-term secrets and the key file that holds them.
//!
//! * an X25519 static key pair: contacts derive pair keys from it (the contact code carries the
//!   public half);
//! * an Ed25519 account key, registered with both servers: it signs writes and reads;
//! * a 32-byte self-pair key: the PRF and AEAD key of the padding writes to the user's own slot.
//!
//! The key file `identity.key` is created with mode 0600 in a 0700 home directory and holds
//! `magic (8) || x25519 secret (32) || ed25519 secret (32) || self-pair key (32)`. Every copy of a
//! secret in memory is zeroized when dropped.

use std::io::{Read, Write};
use std::path::Path;

use dpf::RandomSource;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::code::encode_code;
use crate::error::Error;
use crate::fsutil::{create_private_file, read_private_file};

const MAGIC: &[u8; 8] = b"mpmkey01";
const FILE_LEN: usize = 8 + 32 + 32 + 32;

/// The user's secrets. Zeroized on drop.
pub struct Identity {
    x25519: StaticSecret,
    x25519_public: PublicKey,
    account: SigningKey,
    self_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &hex::encode(self.x25519_public.as_bytes()))
            .field(
                "account",
                &hex::encode(self.account.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Draws a fresh identity.
    pub fn generate(rng: &mut impl RandomSource) -> Self {
        let mut bytes = Zeroizing::new([0u8; 96]);
        rng.fill(&mut bytes[..]);
        Self::from_secret_bytes(&bytes)
    }

    fn from_secret_bytes(bytes: &[u8; 96]) -> Self {
        let mut x = [0u8; 32];
        x.copy_from_slice(&bytes[..32]);
        let x25519 = StaticSecret::from(x);
        x.zeroize();
        let mut e = Zeroizing::new([0u8; 32]);
        e.copy_from_slice(&bytes[32..64]);
        let account = SigningKey::from_bytes(&e);
        let mut self_key = Zeroizing::new([0u8; 32]);
        self_key.copy_from_slice(&bytes[64..96]);
        let x25519_public = PublicKey::from(&x25519);
        Self {
            x25519,
            x25519_public,
            account,
            self_key,
        }
    }

    /// The X25519 public key (what the contact code carries).
    pub fn public_key(&self) -> [u8; 32] {
        *self.x25519_public.as_bytes()
    }

    /// The contact code of this identity.
    pub fn contact_code(&self) -> String {
        encode_code(&self.public_key())
    }

    /// The Ed25519 account public key registered with the servers.
    pub fn account_public(&self) -> VerifyingKey {
        self.account.verifying_key()
    }

    /// Signs `msg` with the account key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.account.sign(msg).to_bytes()
    }

    /// The account signing key (for helpers of the `protocol` crate that sign on our behalf).
    pub fn account_key(&self) -> &SigningKey {
        &self.account
    }

    /// The static X25519 secret, for pair key derivation.
    pub(crate) fn x25519_secret(&self) -> &StaticSecret {
        &self.x25519
    }

    /// The self-pair key.
    pub(crate) fn self_key(&self) -> &[u8; 32] {
        &self.self_key
    }

    /// Writes the key file; refuses to overwrite an existing one.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let mut buf = Zeroizing::new(Vec::with_capacity(FILE_LEN));
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(self.x25519.as_bytes());
        buf.extend_from_slice(self.account.as_bytes());
        buf.extend_from_slice(&self.self_key[..]);
        let mut f = create_private_file(path)?;
        f.write_all(&buf).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))?;
        Ok(())
    }

    /// Reads the key file, refusing one that other users can read.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let mut f = read_private_file(path)?;
        let mut buf = Zeroizing::new(Vec::with_capacity(FILE_LEN));
        Read::by_ref(&mut f)
            .take(FILE_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        if buf.len() != FILE_LEN || &buf[..8] != MAGIC {
            return Err(Error::Corrupt(format!(
                "{} is not a version-1 key file",
                path.display()
            )));
        }
        let mut secret = Zeroizing::new([0u8; 96]);
        secret.copy_from_slice(&buf[8..]);
        Ok(Self::from_secret_bytes(&secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpf::SeededRandom;

    #[test]
    fn key_file_round_trips_with_private_mode() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let path = dir.path().join("identity.key");
        let id = Identity::generate(&mut SeededRandom::new([4; 32]));
        id.save(&path)?;
        let back = Identity::load(&path)?;
        assert_eq!(back.public_key(), id.public_key());
        assert_eq!(back.account_public(), id.account_public());
        assert_eq!(back.self_key(), id.self_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(id.save(&path), Err(Error::Io { .. })));
        Ok(())
    }

    #[test]
    fn truncated_or_foreign_key_files_are_rejected() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let path = dir.path().join("identity.key");
        let mut f = create_private_file(&path)?;
        f.write_all(b"mpmkey01 too short")
            .map_err(|e| Error::io(&path, e))?;
        drop(f);
        assert!(matches!(Identity::load(&path), Err(Error::Corrupt(_))));
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_file_is_refused() -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let path = dir.path().join("identity.key");
        Identity::generate(&mut SeededRandom::new([5; 32])).save(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(&path, e))?;
        assert!(matches!(
            Identity::load(&path),
            Err(Error::InsecurePermissions { .. })
        ));
        Ok(())
    }

    #[test]
    fn signatures_verify_under_the_account_key() {
        use ed25519_dalek::{Signature, Verifier};
        let id = Identity::generate(&mut SeededRandom::new([6; 32]));
        let sig = Signature::from_bytes(&id.sign(b"hello"));
        assert!(id.account_public().verify(b"hello", &sig).is_ok());
        assert!(id.account_public().verify(b"hellp", &sig).is_err());
    }
}
