//! Signing keys shared by every gateway through the store: the key-encryption key (KEK) file,
//! private keys sealed under it, the key ring built from the stored keys, the first key and
//! publish-then-activate rotation.
//!
//! # The KEK file
//! The standard base64 of 32 random bytes (a trailing newline allowed), mode 0600 or stricter:
//! a file group or others can read, of another length or not base64 is refused at start, never
//! used. `gatehouse keys new-kek PATH` writes one. Every gateway sharing a store needs the same
//! KEK; the store alone (a dump, a replica, a backup) never yields a private key.
//!
//! # Sealed keys
//! AES-256-GCM with a random 96-bit nonce per seal (a KEK seals a handful of keys in its life,
//! far below the 2^32 random nonces a GCM key allows). The stored bytes are
//! `version (1) || nonce (12) || ciphertext || tag (16)`; the plaintext is the key in the key
//! files' PEM form. The additional authenticated data binds the record to its place:
//! `"gatehouse signing key" || version || u16 len(kid) || kid || u16 len(alg) || alg` (lengths
//! big-endian), so a sealed key copied to another kid or algorithm does not open. A key that
//! does not open (another KEK, altered bytes) stops the gateway with an error naming the kid:
//! it never signs with, nor generates, anything else.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::auth::keys::{KeyAlg, KeyEntry, KeyError, KeyRing, NewKey, fill_random};
use crate::store::{Store, StoreError, StoredKey};

/// Bytes of a KEK (AES-256).
pub const KEK_BYTES: usize = 32;
/// Format version of a sealed key, its first byte and part of its AAD.
const SEAL_VERSION: u8 = 1;
/// Domain separation: these AAD bytes mean "a gatehouse signing key" and nothing else.
const AAD_LABEL: &[u8] = b"gatehouse signing key";
const TAG_LEN: usize = 16;
/// Longest KEK file read: the base64 of 32 bytes is 44 characters.
const MAX_KEK_FILE_BYTES: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("KEK file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("KEK file {path} is accessible by group or others (mode {mode:o}); chmod 600 it")]
    InsecureKek { path: PathBuf, mode: u32 },
    #[error("KEK file {path}: {reason}")]
    BadKek { path: PathBuf, reason: &'static str },
    #[error("KEK file {path} already exists; refusing to overwrite it")]
    KekExists { path: PathBuf },
    #[error(
        "stored signing key {kid} does not open with this KEK: the kek_file is not the one the \
         key was sealed with, or the stored record was altered"
    )]
    WrongKek { kid: String },
    #[error("stored signing key {kid}: {reason}")]
    Malformed { kid: String, reason: &'static str },
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The key-encryption key, read from its file.
pub struct Kek {
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// Reads and checks the KEK file (see the module doc).
    pub fn load(path: &Path) -> Result<Self, KeystoreError> {
        let io = |source| KeystoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason| KeystoreError::BadKek {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeystoreError::InsecureKek {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let mut text = Zeroizing::new(Vec::new());
        file.take(MAX_KEK_FILE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_KEK_FILE_BYTES {
            return Err(bad("too large for a KEK (expected 44 base64 characters)"));
        }
        let trimmed = text.trim_ascii();
        let bytes = Zeroizing::new(
            STANDARD
                .decode(trimmed)
                .map_err(|_| bad("not base64 (expected the base64 of 32 random bytes)"))?,
        );
        if bytes.len() != KEK_BYTES {
            return Err(bad("not 32 bytes once decoded"));
        }
        Self::from_bytes(&bytes).ok_or(bad("not usable as an AES-256 key"))
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// Writes a new random KEK to `path`, mode 0600; an existing file is never overwritten.
    pub fn write_new(path: &Path) -> Result<(), KeystoreError> {
        let mut bytes = Zeroizing::new([0u8; KEK_BYTES]);
        fill_random(bytes.as_mut());
        let mut text = Zeroizing::new(STANDARD.encode(bytes.as_ref()));
        text.push('\n');
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => KeystoreError::KekExists {
                    path: path.to_path_buf(),
                },
                _ => KeystoreError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| KeystoreError::Io {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Seals a private key for the record of `kid` and `alg`.
    pub fn seal(&self, kid: &str, alg: KeyAlg, private: &[u8]) -> Result<Vec<u8>, KeystoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut in_out = Zeroizing::new(private.to_vec());
        // Sealing fails only for inputs beyond GCM's length limit (64 GiB); a key is a few KiB.
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kid, alg)),
                &mut *in_out,
            )
            .map_err(|_| KeystoreError::Malformed {
                kid: kid.to_owned(),
                reason: "sealing failed",
            })?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        sealed.push(SEAL_VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Opens what [`Kek::seal`] sealed for `kid` and `alg`; anything else is refused.
    pub fn open(
        &self,
        kid: &str,
        alg: KeyAlg,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        let malformed = |reason| KeystoreError::Malformed {
            kid: kid.to_owned(),
            reason,
        };
        let (&version, rest) = sealed.split_first().ok_or(malformed("empty record"))?;
        if version != SEAL_VERSION {
            return Err(malformed("unknown sealing format version"));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(malformed("sealed record too short"));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| malformed("sealed record too short"))?;
        let mut in_out = Zeroizing::new(ciphertext.to_vec());
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad(kid, alg)), &mut in_out)
            .map_err(|_| KeystoreError::WrongKek {
                kid: kid.to_owned(),
            })?
            .len();
        in_out.truncate(plain_len);
        Ok(in_out)
    }
}

/// The AAD of a sealed key (see the module doc): its format version, kid and algorithm.
fn aad(kid: &str, alg: KeyAlg) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 5 + kid.len() + 8);
    aad.extend_from_slice(AAD_LABEL);
    aad.push(SEAL_VERSION);
    for part in [kid.as_bytes(), alg.name().as_bytes()] {
        // Kids are at most MAX_KID_BYTES (128) and names a few bytes: the length always fits.
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

/// A new key of `alg`, sealed, signing from `active_from`.
pub fn new_sealed_key(
    kek: &Kek,
    alg: KeyAlg,
    now: i64,
    active_from: i64,
) -> Result<StoredKey, KeystoreError> {
    let key = NewKey::generate(alg)?;
    Ok(StoredKey {
        sealed: kek.seal(&key.kid, alg, key.private.as_bytes())?,
        kid: key.kid,
        alg,
        created_at: now,
        active_from,
        retired_at: None,
    })
}

/// The ring of the stored keys at `now` (see [`KeyRing::from_entries`]); keys retired `retain`
/// or longer ago are not read. Every key must open with `kek`.
pub async fn load_ring(
    store: &dyn Store,
    kek: &Kek,
    retain: Duration,
    now: i64,
) -> Result<KeyRing, KeystoreError> {
    let stored = store.signing_keys(now.saturating_sub(secs(retain))).await?;
    let mut entries = Vec::with_capacity(stored.len());
    for key in stored {
        entries.push(KeyEntry {
            private: kek.open(&key.kid, key.alg, &key.sealed)?,
            kid: key.kid,
            alg: key.alg,
            active_from: key.active_from,
            retired_at: key.retired_at,
        });
    }
    Ok(KeyRing::from_entries(entries, retain, now)?)
}

/// [`load_ring`], storing a first key of `alg` (signing at once: no earlier key exists to be
/// published ahead of) when the store has never held one. Of gateways starting at once, one
/// key wins and all load it. A store that holds keys the KEK cannot open is an error, never a
/// reason for a new key.
pub async fn load_or_create_ring(
    store: &dyn Store,
    kek: &Kek,
    alg: KeyAlg,
    retain: Duration,
    now: i64,
) -> Result<KeyRing, KeystoreError> {
    // Generating is skipped when keys exist: an RSA key takes a moment.
    if store.signing_keys(i64::MIN).await?.is_empty() {
        let first = new_sealed_key(kek, alg, now, now)?;
        let kid = first.kid.clone();
        if store.insert_first_if_empty(first).await? {
            tracing::info!(%kid, %alg, "stored a first signing key");
        }
    }
    load_ring(store, kek, retain, now).await
}

/// Stores a new key of `alg` that signs from `now + publish_ahead`; the keys signing so far
/// sign until then and verify for `retain` after; keys retired `retain` or longer ago are
/// deleted. Returns the new key (without its secret).
pub async fn rotate(
    store: &dyn Store,
    kek: &Kek,
    alg: KeyAlg,
    publish_ahead: Duration,
    retain: Duration,
    now: i64,
) -> Result<StoredKey, KeystoreError> {
    let key = new_sealed_key(kek, alg, now, now.saturating_add(secs(publish_ahead)))?;
    store
        .add_and_retire(key.clone(), now.saturating_sub(secs(retain)))
        .await?;
    Ok(StoredKey {
        sealed: Vec::new(),
        ..key
    })
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::revocation::Revocation;
    use crate::store::sqlite::SqliteStore;

    const RETAIN: Duration = Duration::from_secs(900);
    const AHEAD: Duration = Duration::from_secs(600);
    const T0: i64 = 1_700_000_000;

    fn kek_in(dir: &tempfile::TempDir, name: &str) -> Kek {
        let path = dir.path().join(name);
        Kek::write_new(&path).unwrap();
        Kek::load(&path).unwrap()
    }

    fn store_in(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap())
    }

    fn published(ring: &KeyRing) -> Vec<String> {
        ring.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_sealed_key_moved_to_another_kid_or_algorithm_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let kek = kek_in(&dir, "kek");
        let sealed = kek.seal("kid-a", KeyAlg::EdDSA, b"private").unwrap();
        assert_eq!(
            kek.open("kid-a", KeyAlg::EdDSA, &sealed)
                .unwrap()
                .as_slice(),
            b"private"
        );
        for (kid, alg) in [("kid-b", KeyAlg::EdDSA), ("kid-a", KeyAlg::HS256)] {
            let err = kek.open(kid, alg, &sealed).unwrap_err();
            assert!(matches!(err, KeystoreError::WrongKek { .. }), "{err}");
        }
        // Every byte is covered: the version (in the AAD), the nonce, the ciphertext, the tag.
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 1;
            assert!(
                kek.open("kid-a", KeyAlg::EdDSA, &altered).is_err(),
                "byte {i}"
            );
        }
        assert!(kek.open("kid-a", KeyAlg::EdDSA, &sealed[..20]).is_err());
        assert!(kek.open("kid-a", KeyAlg::EdDSA, &[]).is_err());
        // Two seals of one key differ (a fresh nonce each).
        assert_ne!(
            sealed,
            kek.seal("kid-a", KeyAlg::EdDSA, b"private").unwrap()
        );
    }

    /// The store is writable by whoever holds its credentials; swapping two sealed keys between
    /// records (so one kid signs with another key) is refused at load.
    #[tokio::test]
    async fn sealed_keys_swapped_between_stored_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kek = kek_in(&dir, "kek");
        let store = store_in(&dir);
        load_or_create_ring(&*store, &kek, KeyAlg::EdDSA, RETAIN, T0)
            .await
            .unwrap();
        rotate(&*store, &kek, KeyAlg::EdDSA, AHEAD, RETAIN, T0)
            .await
            .unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        conn.execute_batch(
            "UPDATE signing_keys SET sealed = (SELECT sealed FROM signing_keys s2 \
             WHERE s2.kid <> signing_keys.kid)",
        )
        .unwrap();
        let err = load_ring(&*store, &kek, RETAIN, T0).await.unwrap_err();
        assert!(matches!(err, KeystoreError::WrongKek { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_wrong_kek_refuses_to_start_instead_of_minting_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir);
        let first = load_or_create_ring(&*store, &kek_in(&dir, "kek"), KeyAlg::EdDSA, RETAIN, T0)
            .await
            .unwrap();
        let other = kek_in(&dir, "other");
        let err = load_or_create_ring(&*store, &other, KeyAlg::EdDSA, RETAIN, T0)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, KeystoreError::WrongKek { kid } if *kid == first.signing().kid),
            "{err}"
        );
        assert!(err.to_string().contains("kek_file"), "{err}");
        let kids: Vec<_> = store.signing_keys(0).await.unwrap();
        assert_eq!(kids.len(), 1, "no second key was stored");
        assert_eq!(kids[0].kid, first.signing().kid);
    }

    #[test]
    fn a_world_or_group_readable_kek_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        Kek::write_new(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Kek::load(&path).unwrap_err();
            assert!(
                matches!(err, KeystoreError::InsecureKek { mode: m, .. } if m == mode),
                "{err}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Kek::load(&path).is_ok());
    }

    #[test]
    fn a_kek_file_of_the_wrong_length_or_not_base64_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let write = |text: &[u8]| {
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let cases: [&[u8]; 6] = [
            b"",
            b"\n",
            b"c2hvcnQ=\n",
            b"not base64 at all, not at all, no, not at all!!\n",
            // 33 bytes.
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
            &[b'A'; 300],
        ];
        for text in cases {
            write(text);
            let err = Kek::load(&path).unwrap_err();
            assert!(matches!(err, KeystoreError::BadKek { .. }), "{err}");
        }
        write(format!("{}\n", STANDARD.encode([7u8; 32])).as_bytes());
        assert!(Kek::load(&path).is_ok());
        let missing = Kek::load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(missing, KeystoreError::Io { .. }), "{missing}");
    }

    #[test]
    fn a_new_kek_never_overwrites_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        Kek::write_new(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = Kek::write_new(&path).unwrap_err();
        assert!(matches!(err, KeystoreError::KekExists { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(
            STANDARD.decode(before.trim_ascii()).unwrap().len(),
            KEK_BYTES
        );
    }

    #[tokio::test]
    async fn a_rotated_key_is_published_before_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let kek = kek_in(&dir, "kek");
        let store = store_in(&dir);
        let first = load_or_create_ring(&*store, &kek, KeyAlg::EdDSA, RETAIN, T0)
            .await
            .unwrap();
        let old = first.signing().kid.clone();
        assert_eq!(first.next_transition(), None, "one key, never retired");
        let new = rotate(&*store, &kek, KeyAlg::ES256, AHEAD, RETAIN, T0 + 10)
            .await
            .unwrap();
        assert_eq!(new.active_from, T0 + 10 + 600);

        let published_ahead = load_ring(&*store, &kek, RETAIN, T0 + 10).await.unwrap();
        assert_eq!(
            published_ahead.signing().kid,
            old,
            "the old key signs until then"
        );
        assert_eq!(published_ahead.signing().alg, KeyAlg::EdDSA);
        assert_eq!(published(&published_ahead), [old.clone(), new.kid.clone()]);
        assert!(published_ahead.verification_key(&new.kid).is_some());
        assert_eq!(published_ahead.next_transition(), Some(new.active_from));

        let just_before = load_ring(&*store, &kek, RETAIN, new.active_from - 1).await;
        assert_eq!(just_before.unwrap().signing().kid, old);
        let activated = load_ring(&*store, &kek, RETAIN, new.active_from)
            .await
            .unwrap();
        assert_eq!(activated.signing().kid, new.kid);
        assert_eq!(published(&activated), [new.kid.clone(), old.clone()]);
        let retired = activated.verification_key(&old).unwrap();
        assert_eq!(retired.not_after, Some(new.active_from + 900));
        assert_eq!(activated.next_transition(), Some(new.active_from + 900));

        let later = load_ring(&*store, &kek, RETAIN, new.active_from + 900)
            .await
            .unwrap();
        assert!(later.verification_key(&old).is_none(), "past its retention");
        assert_eq!(published(&later), [new.kid]);
        assert_eq!(later.next_transition(), None);
    }

    /// Gateways sharing the store (two handles, as two processes hold): a rotation through A is
    /// announced in the feed a follower of B reads; B's ring rebuilt then publishes the new key
    /// and keeps signing with the old one until it activates.
    #[tokio::test]
    async fn a_rotation_on_one_handle_reaches_a_ring_following_the_other_through_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let kek = kek_in(&dir, "kek");
        let (a, b) = (store_in(&dir), store_in(&dir));
        let ring_b = load_or_create_ring(&*b, &kek, KeyAlg::EdDSA, RETAIN, T0)
            .await
            .unwrap();
        let follower = Revocation::load(&*b, T0).await.unwrap();
        assert!(!follower.take_keys_changed());
        let ring_a = load_or_create_ring(&*a, &kek, KeyAlg::EdDSA, RETAIN, T0)
            .await
            .unwrap();
        assert_eq!(ring_a.signing().kid, ring_b.signing().kid, "one first key");

        let new = rotate(&*a, &kek, KeyAlg::EdDSA, AHEAD, RETAIN, T0 + 1)
            .await
            .unwrap();
        follower.catch_up(&*b, T0 + 1).await.unwrap();
        assert!(
            follower.take_keys_changed(),
            "the feed announced the rotation"
        );
        assert!(!follower.take_keys_changed(), "once");
        let rebuilt = load_ring(&*b, &kek, RETAIN, T0 + 1).await.unwrap();
        assert_eq!(rebuilt.signing().kid, ring_b.signing().kid);
        assert!(published(&rebuilt).contains(&new.kid));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn gateways_starting_at_once_sign_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Arc::new(kek_in(&dir, "kek"));
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let (store, kek) = (store_in(&dir), Arc::clone(&kek));
                tokio::spawn(async move {
                    load_or_create_ring(&*store, &kek, KeyAlg::EdDSA, RETAIN, T0)
                        .await
                        .unwrap()
                        .signing()
                        .kid
                        .clone()
                })
            })
            .collect();
        let mut kids = Vec::new();
        for start in starts {
            kids.push(start.await.unwrap());
        }
        kids.dedup();
        assert_eq!(kids.len(), 1, "{kids:?}");
    }
}
