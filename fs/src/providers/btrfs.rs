//! The btrfs provider's volumes: a btrfs subvolume that applications use
//! directly (no FUSE on the live path), whose sets are read-only snapshots
//! the kernel makes. The snapshots live in `<backing>/.umbra`, itself a
//! subvolume owned by root with mode 0700, so that a snapshot of the volume
//! shows it only as an empty directory and no user can reach into it.
//! A set's snapshot is named by the set's catalog id; one being made is
//! named `pending-<set guid>` until the set is committed, so that a crash
//! in between leaves a name the start-up sweep recognises and destroys.
//!
//! Every operation goes through the descriptors opened at start, never a
//! path: a user who renames the backing's root entries cannot redirect a
//! snapshot or a deletion.
//!
//! `umbra diff` and `umbra versions` read the snapshots' trees by tree
//! search (changes.rs, versions.rs over tree.rs and search.rs); a diff to
//! the live volume takes a read-only `scratch-*` snapshot for the purpose
//! and destroys it after (one a crash leaves, the start-up sweep does).

mod changes;
mod ioctl;
mod search;
mod tree;
mod versions;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as Clock};

use umbra_coordinator::ProviderError;
use umbra_store::{Epoch, SetId, SetInfo, Store, VolumeId};

use super::{Capture, ProviderKind, Retiring, SetCommit, VolumeProvider, VolumeRef};
use crate::backing::{self, cstr};
use crate::changes::diff;
use crate::error::Context;
use crate::{Changes, FsError, HIDDEN_DIR, Instant, Result, Version};

/// A volume of the btrfs provider.
pub struct BtrfsVolume {
    id: VolumeId,
    name: String,
    backing_path: PathBuf,
    /// The live subvolume's root directory.
    root: OwnedFd,
    /// `<backing>/.umbra`: the subvolume that holds the snapshots.
    images: OwnedFd,
}

/// The name of a set's snapshot in `.umbra`.
fn image_name(set: SetId) -> OsString {
    OsString::from(set.0.to_string())
}

fn pending_name(guid: &str) -> OsString {
    OsString::from(format!("pending-{guid}"))
}

impl BtrfsVolume {
    /// Opens the subvolume at `backing` as volume `name`, registers the
    /// volume in the store, and makes `.umbra` if it is missing. Refused
    /// if `backing` is not the root of a btrfs subvolume, or if `.umbra`
    /// exists and is not umbra's (a subvolume owned by root, 0700).
    pub fn open(store: &Store, name: &str, backing: &Path) -> Result<Arc<BtrfsVolume>> {
        let root: OwnedFd = std::fs::File::open(backing)
            .context(|| format!("opening the subvolume {}", backing.display()))?
            .into();
        let st = backing::fstat(root.as_fd())?;
        let is_btrfs = ioctl::is_btrfs(root.as_fd())
            .context(|| format!("checking the filesystem of {}", backing.display()))?;
        if !is_btrfs || st.st_ino != ioctl::SUBVOLUME_ROOT_INO {
            return Err(FsError::Refused(format!(
                "{} is not the root of a btrfs subvolume, which provider = \"btrfs\" needs \
                 (make one with `btrfs subvolume create {}`)",
                backing.display(),
                backing.display()
            )));
        }
        let images = open_images(root.as_fd(), backing)?;
        let info = store.ensure_volume(name)?;
        Ok(Arc::new(BtrfsVolume {
            id: info.id,
            name: name.to_string(),
            backing_path: backing.to_path_buf(),
            root,
            images,
        }))
    }

    /// Whether `path` is the root of a btrfs subvolume (what `provider =
    /// "auto"` picks btrfs for).
    pub fn is_subvolume(path: &Path) -> bool {
        let Ok(dir) = std::fs::File::open(path) else {
            return false;
        };
        let root =
            backing::fstat(dir.as_fd()).is_ok_and(|st| st.st_ino == ioctl::SUBVOLUME_ROOT_INO);
        root && ioctl::is_btrfs(dir.as_fd()).unwrap_or(false)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> VolumeId {
        self.id
    }

    pub fn backing_path(&self) -> &Path {
        &self.backing_path
    }

    /// The live subvolume's root directory.
    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The tree of `set`'s snapshot; refused if the set has none.
    fn tree(&self, set: SetId) -> Result<tree::Tree> {
        let Some(root) = self.image(set)? else {
            return Err(FsError::Refused(format!(
                "set {set} has no snapshot of volume {} in {}/{HIDDEN_DIR}",
                self.name,
                self.backing_path.display()
            )));
        };
        tree::Tree::open(root)
            .context(|| format!("reading the snapshot of set {set} of {}", self.name))
    }

    /// A read-only snapshot of the live subvolume now, destroyed when the
    /// guard goes (a crash leaves it to the start-up sweep: no set owns it).
    fn scratch(&self) -> Result<(Scratch<'_>, tree::Tree)> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let name = OsString::from(format!(
            "scratch-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        ioctl::snapshot_read_only(self.root.as_fd(), self.images.as_fd(), &name)
            .context(|| format!("snapshotting {} to diff it", self.backing_path.display()))?;
        let scratch = Scratch { volume: self, name };
        let fd = backing::openat(
            self.images.as_fd(),
            &cstr(&scratch.name)?,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let tree = tree::Tree::open(fd)?;
        Ok((scratch, tree))
    }

    /// The read-only snapshot of `set`, if the volume has one.
    pub fn image(&self, set: SetId) -> Result<Option<OwnedFd>> {
        let name = cstr(&image_name(set))?;
        match backing::openat(
            self.images.as_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => {
                Err(e).context(|| format!("opening the snapshot of set {set} of {}", self.name))
            }
        }
    }

    /// Writes the filesystem's dirty data back (syncfs).
    pub(crate) fn flush(&self) -> Result<()> {
        // SAFETY: syncfs on a descriptor we own.
        if unsafe { libc::syncfs(self.root.as_raw_fd()) } < 0 {
            return Err(io::Error::last_os_error())
                .context(|| format!("flushing {}", self.backing_path.display()));
        }
        Ok(())
    }

    /// Takes the read-only snapshot of the live subvolume for the set
    /// `guid` being made; returns how long the kernel took.
    pub(crate) fn snapshot_pending(&self, guid: &str) -> Result<Duration> {
        let started = Clock::now();
        ioctl::snapshot_read_only(self.root.as_fd(), self.images.as_fd(), &pending_name(guid))
            .context(|| format!("snapshotting {}", self.backing_path.display()))?;
        Ok(started.elapsed())
    }

    /// Names the pending snapshot of `guid` after the committed set `set`.
    pub(crate) fn keep_pending(&self, guid: &str, set: SetId) -> Result<()> {
        let from = cstr(&pending_name(guid))?;
        let to = cstr(&image_name(set))?;
        let dir = self.images.as_raw_fd();
        // SAFETY: both names are valid C strings; both fds are ours.
        let ret = unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error())
                .context(|| format!("naming the snapshot of set {set} of {}", self.name));
        }
        Ok(())
    }

    /// Destroys the pending snapshot of `guid`, if it was made.
    pub(crate) fn drop_pending(&self, guid: &str) -> Result<()> {
        self.destroy(&pending_name(guid))
    }

    /// Destroys the snapshot of `set`, if there is one.
    pub(crate) fn drop_image(&self, set: SetId) -> Result<()> {
        self.destroy(&image_name(set))
    }

    fn destroy(&self, name: &OsStr) -> Result<()> {
        match ioctl::destroy(self.images.as_fd(), name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.context(|| {
                format!(
                    "destroying the snapshot {}/{HIDDEN_DIR}/{}",
                    self.backing_path.display(),
                    name.to_string_lossy()
                )
            }),
        }
    }

    /// Destroys every snapshot no set of `sets` owns: pending ones a crash
    /// left, and those of sets deleted while their destruction was cut off.
    /// Returns how many went.
    pub(crate) fn sweep(&self, sets: &[SetInfo]) -> Result<usize> {
        let ours = |name: &OsStr| -> bool {
            let Some(id) = std::str::from_utf8(name.as_bytes())
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            else {
                return false;
            };
            sets.iter()
                .any(|s| s.id.0 == id && s.volumes.iter().any(|v| v.volume == self.id))
        };
        let mut gone = 0;
        for (name, _, _) in backing::list_dir(self.images.as_fd())? {
            if ours(&name) {
                continue;
            }
            // Only a snapshot of this very subvolume is umbra's to destroy.
            if !self.is_snapshot_of_live(&name) {
                tracing::warn!(volume = %self.name, "{}/{HIDDEN_DIR} holds {:?}, which umbra did not make; left as it is", self.backing_path.display(), name);
                continue;
            }
            self.destroy(&name)?;
            tracing::warn!(volume = %self.name, snapshot = ?name, "destroyed a snapshot no set owns (a set interrupted or deleted before a crash)");
            gone += 1;
        }
        Ok(gone)
    }

    /// Whether `name` in `.umbra` is a snapshot taken of the live subvolume.
    fn is_snapshot_of_live(&self, name: &OsStr) -> bool {
        let Ok(name) = cstr(name) else {
            return false;
        };
        let Ok(fd) = backing::openat(
            self.images.as_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) else {
            return false;
        };
        // readdir gives a subvolume's tree id, not its root's inode.
        let root =
            backing::fstat(fd.as_fd()).is_ok_and(|st| st.st_ino == ioctl::SUBVOLUME_ROOT_INO);
        match (
            ioctl::subvolume_info(fd.as_fd()),
            ioctl::subvolume_info(self.root.as_fd()),
        ) {
            (Ok(image), Ok(live)) => root && image.parent_uuid == live.uuid,
            _ => false,
        }
    }
}

/// A system error while reading a volume's snapshots, said as such; errors
/// about the request itself (ENOENT, EISDIR: the caller's path) as they are.
fn reading(e: FsError, volume: &str) -> FsError {
    match e {
        FsError::Io(source)
            if !matches!(
                source.raw_os_error(),
                Some(libc::ENOENT | libc::EISDIR | libc::ENOTDIR | libc::EINVAL)
            ) =>
        {
            FsError::Context {
                what: format!("reading the btrfs snapshots of {volume}"),
                source,
            }
        }
        other => other,
    }
}

/// A snapshot of the live subvolume taken for one diff: destroyed when it
/// goes.
struct Scratch<'v> {
    volume: &'v BtrfsVolume,
    name: OsString,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.volume.destroy(&self.name) {
            tracing::error!(volume = %self.volume.name, "destroying the snapshot taken for a diff: {e} (the next start destroys it)");
        }
    }
}

/// `.umbra` in the subvolume `root`: made as a root-only subvolume when
/// missing; refused when it exists and is not that (a user made it first).
fn open_images(root: BorrowedFd<'_>, backing: &Path) -> Result<OwnedFd> {
    let name = cstr(OsStr::new(HIDDEN_DIR))?;
    let shown = || format!("{}/{HIDDEN_DIR}", backing.display());
    match backing::statat(root, &name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            ioctl::create_subvolume(root, OsStr::new(HIDDEN_DIR))
                .context(|| format!("creating the subvolume {}", shown()))?;
            let fd = backing::openat(
                root,
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .context(|| format!("opening {}", shown()))?;
            // SAFETY: fchmod/fchown on a descriptor we own.
            let ret = unsafe {
                if libc::fchown(fd.as_raw_fd(), 0, 0) == 0 {
                    libc::fchmod(fd.as_raw_fd(), 0o700)
                } else {
                    -1
                }
            };
            if ret < 0 {
                return Err(io::Error::last_os_error()).context(|| format!("securing {}", shown()));
            }
            Ok(fd)
        }
        Err(e) => Err(e).context(|| format!("looking at {}", shown())),
        Ok(_) => {
            let fd = backing::openat(
                root,
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(|_| not_ours(&shown()))?;
            let st = backing::fstat(fd.as_fd())?;
            if st.st_ino != ioctl::SUBVOLUME_ROOT_INO || st.st_uid != 0 || st.st_mode & 0o077 != 0 {
                return Err(not_ours(&shown()));
            }
            Ok(fd)
        }
    }
}

fn not_ours(path: &str) -> FsError {
    FsError::Refused(format!(
        "{path} exists but is not umbra's snapshot folder (a subvolume owned by root with mode 0700): \
         move it away and start again"
    ))
}

impl super::TreeImages for BtrfsVolume {
    fn volume(&self) -> VolumeId {
        self.id
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn image(&self, set: SetId) -> Result<Option<OwnedFd>> {
        BtrfsVolume::image(self, set)
    }
}

/// The btrfs provider over its volumes.
pub struct BtrfsProvider {
    volumes: Vec<Arc<BtrfsVolume>>,
}

impl BtrfsProvider {
    pub fn new(volumes: Vec<Arc<BtrfsVolume>>) -> BtrfsProvider {
        BtrfsProvider { volumes }
    }

    fn picked(&self, ids: &[VolumeId]) -> Result<Vec<&Arc<BtrfsVolume>>, ProviderError> {
        ids.iter()
            .map(|id| {
                self.volumes
                    .iter()
                    .find(|v| v.id == *id)
                    .ok_or_else(|| ProviderError::Failed(format!("no btrfs volume #{}", id.0)))
            })
            .collect()
    }

    fn volume(&self, id: VolumeId) -> Result<&Arc<BtrfsVolume>> {
        self.volumes
            .iter()
            .find(|v| v.id == id)
            .ok_or_else(|| FsError::Refused(format!("no btrfs volume #{}", id.0)))
    }
}

/// Snapshots taken under the set's GUID, named after the set once it is
/// committed.
struct Snapshots {
    volumes: Vec<Arc<BtrfsVolume>>,
    guid: String,
    hold: Duration,
}

impl Capture for Snapshots {
    fn hold(&self) -> Duration {
        self.hold
    }

    fn keep(self: Box<Self>, set: &SetInfo) -> Result<()> {
        for volume in &self.volumes {
            volume.keep_pending(&self.guid, set.id)?;
        }
        Ok(())
    }

    fn undo(self: Box<Self>) {
        for volume in &self.volumes {
            if let Err(e) = volume.drop_pending(&self.guid) {
                tracing::error!(volume = %volume.name, "destroying the snapshot of a failed set: {e} (the next start destroys it)");
            }
        }
    }
}

impl VolumeProvider for BtrfsProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Btrfs
    }

    fn volumes(&self) -> Vec<VolumeRef> {
        self.volumes
            .iter()
            .map(|v| VolumeRef {
                id: v.id,
                name: v.name.clone(),
                kind: ProviderKind::Btrfs,
            })
            .collect()
    }

    fn prepare(&self, ids: &[VolumeId]) -> Result<(), ProviderError> {
        // Flush first, hold after, as VSS's flush-and-hold: the snapshot
        // ioctl flushes whatever is still dirty inside its own commit, so
        // what is written back here (the writers are frozen already) no
        // longer lengthens the hold.
        for volume in self.picked(ids)? {
            volume
                .flush()
                .map_err(|e| ProviderError::Failed(e.to_string()))?;
        }
        Ok(())
    }

    fn capture(
        &self,
        ids: &[VolumeId],
        set: &Arc<SetCommit>,
        deadline: Clock,
    ) -> Result<Box<dyn Capture>, ProviderError> {
        let volumes: Vec<Arc<BtrfsVolume>> = self.picked(ids)?.into_iter().cloned().collect();
        let guid = set.guid().to_string();
        // One thread per volume: the kernel commits each snapshot's
        // transaction, and they overlap.
        let taken: Vec<Result<Duration>> = std::thread::scope(|scope| {
            let running: Vec<_> = volumes
                .iter()
                .map(|v| {
                    let guid = &guid;
                    scope.spawn(move || v.snapshot_pending(guid))
                })
                .collect();
            running
                .into_iter()
                .map(|t| {
                    t.join().unwrap_or_else(|_| {
                        Err(FsError::Refused("a snapshot thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut hold = Duration::ZERO;
        let mut error = None;
        for result in taken {
            match result {
                Ok(took) => hold = hold.max(took),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        let snapshots = Box::new(Snapshots {
            volumes,
            guid,
            hold,
        });
        if let Some(e) = error {
            snapshots.undo();
            return Err(ProviderError::Failed(e.to_string()));
        }
        // The ioctl cannot be called off; a snapshot that came too late is
        // not the instant the writers were frozen for.
        if Clock::now() > deadline {
            snapshots.undo();
            return Err(ProviderError::HoldTimeout(Duration::ZERO));
        }
        Ok(snapshots)
    }

    fn retire<'a>(&'a self, _set: &SetInfo) -> Vec<Box<dyn Retiring + 'a>> {
        // A read of a snapshot holds its own descriptor: destroying the
        // subvolume waits for nothing and pulls nothing from under it.
        Vec::new()
    }

    fn reclaim(&self, set: &SetInfo) -> Result<()> {
        for volume in &self.volumes {
            if set.volumes.iter().any(|sv| sv.volume == volume.id) {
                volume.drop_image(set.id)?;
            }
        }
        Ok(())
    }

    fn sweep(&self, sets: &[SetInfo]) -> Result<()> {
        for volume in &self.volumes {
            volume.sweep(sets)?;
        }
        Ok(())
    }

    fn changes(
        &self,
        volume: VolumeId,
        from: Instant,
        to: Instant,
        under: Option<&Path>,
    ) -> Result<Changes> {
        let vol = self.volume(volume)?;
        let Instant::Set { id: from, .. } = from else {
            return Err(FsError::from_errno(libc::EINVAL));
        };
        let old = vol.tree(from)?;
        let (new, scratch) = match to {
            Instant::Set { id, .. } => (vol.tree(id)?, None),
            Instant::Live => {
                let (scratch, tree) = vol.scratch()?;
                (tree, Some(scratch))
            }
        };
        let found =
            changes::BtrfsEnds::new(old, new).and_then(|mut ends| diff::diff(&mut ends, under));
        // The trees' descriptors are closed before their scratch snapshot
        // is destroyed.
        drop(scratch);
        found.map_err(|e| reading(e, &vol.name))
    }

    fn versions(
        &self,
        volume: VolumeId,
        sets: &[(SetId, Epoch)],
        path: &Path,
    ) -> Result<Vec<Version>> {
        let vol = self.volume(volume)?;
        versions::versions(vol, sets, path).map_err(|e| reading(e, &vol.name))
    }
}
