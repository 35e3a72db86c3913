//! A live volume: its backing directory, opened before anything is mounted
//! over it, the daemon's hidden folder inside it, its place in the store,
//! and its copy-on-write state. Shared by the live mount (which mutates it)
//! and the snapshot browser (which reads unchanged objects from it).

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use umbra_store::{Epoch, FileKind, ObjectId, Store, Swap, VolumeId};

use crate::backing::{self, cstr};
use crate::cow::{Clock, Cow};
use crate::error::Context;
use crate::{FsError, HIDDEN_DIR, Result};

/// Moved-aside inodes live in `<backing>/.umbra/aside/<ino>`.
const ASIDE_DIR: &str = "aside";

pub struct Volume {
    id: VolumeId,
    name: String,
    backing_path: PathBuf,
    root: OwnedFd,
    root_object: ObjectId,
    aside_dir: OwnedFd,
    /// Objects whose last name is gone but whose inode a snapshot may need;
    /// live they show `nlink` one less than the backing inode has.
    aside: Mutex<HashSet<ObjectId>>,
    /// Serialises namespace changes (create, unlink, rename, ...): each
    /// must read a directory, preserve it and change it as one step.
    namespace: Mutex<()>,
    /// Held shared by every snapshot read of this volume, exclusive while a
    /// set is deleted: a reader never resolves against half-pruned records.
    retire: RwLock<()>,
    /// Sets deleted while this daemon runs: their records may be pruned.
    retired: Mutex<HashSet<umbra_store::SetId>>,
    /// Numbers once presented by inodes that left the live volume while
    /// the kernel still knew them: their pins stay until it forgets them.
    held: Mutex<HashSet<u64>>,
    pub(crate) cow: Cow,
    /// Lists the inode numbers of the files the live mount has open for
    /// writing; installed by the live mount.
    open_writes: Mutex<Option<OpenWrites>>,
}

pub(crate) type OpenWrites = Box<dyn Fn() -> Vec<u64> + Send + Sync>;

impl Volume {
    /// Opens the backing directory of volume `name` and registers the volume
    /// in the store. Call it before mounting over an in-place backing.
    pub fn open(store: Arc<Store>, name: &str, backing: &Path) -> Result<Arc<Volume>> {
        let info = store.ensure_volume(name)?;
        let root: OwnedFd = std::fs::File::open(backing)
            .context(|| format!("opening backing directory {}", backing.display()))?
            .into();
        let st = backing::fstat(root.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR))
                .context(|| format!("backing {}", backing.display()));
        }
        // Snapshots find moved objects again by file handle: a filesystem
        // without them (some FUSE or overlay mounts) cannot back a volume.
        backing::name_to_handle(root.as_fd(), c"").context(|| {
            format!(
                "backing directory {} is on a filesystem without file handles (name_to_handle_at), which umbra needs",
                backing.display()
            )
        })?;
        let hidden = ensure_dir(root.as_fd(), OsStr::new(HIDDEN_DIR))
            .context(|| format!("creating {}/{HIDDEN_DIR}", backing.display()))?;
        let aside_dir = ensure_dir(hidden.as_fd(), OsStr::new(ASIDE_DIR))
            .context(|| format!("creating {}/{HIDDEN_DIR}/{ASIDE_DIR}", backing.display()))?;
        // Only the names of moved inodes (their numbers): a truncation's
        // half-built successor left by a crash is removed below, and its
        // number, free again, may be the next new file's.
        let aside = backing::list_dir(aside_dir.as_fd())?
            .into_iter()
            .filter_map(|(name, ino, _)| moved_object(&name, ino))
            .collect();
        let any_set = store
            .sets()?
            .iter()
            .any(|s| s.volumes.iter().any(|v| v.volume == info.id));
        let root_object = ObjectId(st.st_ino);
        let cow = Cow::new(
            store,
            info.id,
            root_object,
            Clock {
                current: info.epoch,
                began_here: false,
            },
            any_set,
        );
        let volume = Volume {
            id: info.id,
            name: name.to_string(),
            backing_path: backing.to_path_buf(),
            root,
            root_object,
            aside_dir,
            aside: Mutex::new(aside),
            namespace: Mutex::new(()),
            retire: RwLock::new(()),
            retired: Mutex::new(HashSet::new()),
            held: Mutex::new(HashSet::new()),
            cow,
            open_writes: Mutex::new(None),
        };
        // What a crash left in the aside folder halfway through.
        if let Err(e) = volume.tidy_after_crash() {
            tracing::error!(volume = name, "tidying the aside folder after a crash: {e}");
        }
        // Before anything is freed: a finished swap moves a directory a
        // set needs into the aside folder.
        if let Err(e) = volume.finish_swaps() {
            // The volume still serves; the source name shows the replaced
            // (empty) directory until a later start finishes the move.
            tracing::error!(volume = name, "finishing renames a crash cut short: {e}");
        }
        if let Err(e) = volume.free_unreachable_aside() {
            tracing::warn!(
                volume = name,
                "freeing moved-aside inodes no set needs: {e}"
            );
        }
        Ok(Arc::new(volume))
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

    /// The current (open) epoch.
    pub fn epoch(&self) -> Epoch {
        self.cow.clock().current
    }

    pub(crate) fn set_open_writes(&self, list: OpenWrites) {
        *self.open_writes.lock().unwrap_or_else(|p| p.into_inner()) = Some(list);
    }

    /// The files of the live volume open for writing (a shared writable
    /// mapping keeps its file open), by their inode numbers on the live
    /// mount: whatever name they have now, or none.
    pub fn files_open_for_writing(&self) -> Vec<u64> {
        let mut inos = match self
            .open_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(list) => list(),
            None => return Vec::new(),
        };
        inos.sort_unstable();
        inos.dedup();
        inos
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        self.cow.store()
    }

    pub(crate) fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    pub(crate) fn root_object(&self) -> ObjectId {
        self.root_object
    }

    pub(crate) fn aside_fd(&self) -> BorrowedFd<'_> {
        self.aside_dir.as_fd()
    }

    pub(crate) fn namespace_lock(&self) -> MutexGuard<'_, ()> {
        self.namespace.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn reading(&self) -> RwLockReadGuard<'_, ()> {
        self.retire.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds snapshot reads off and marks `set` as gone for them.
    pub(crate) fn retiring(&self, set: umbra_store::SetId) -> RwLockWriteGuard<'_, ()> {
        let guard = self.retire.write().unwrap_or_else(|p| p.into_inner());
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(set);
        guard
    }

    pub(crate) fn is_retired(&self, set: umbra_store::SetId) -> bool {
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&set)
    }

    pub(crate) fn is_aside(&self, object: ObjectId) -> bool {
        self.aside
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&object)
    }

    pub(crate) fn mark_aside(&self, object: ObjectId) {
        self.aside
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(object);
    }

    /// Frees the aside inodes no remaining set can reach, and any file in
    /// the aside folder that no row accounts for (left by a crash, or moved
    /// aside while the last set was being deleted). An inode whose number a
    /// live inode presents (a truncation's alias) keeps existing, emptied,
    /// so that the number cannot be handed out twice. A file still open
    /// through the live mount lives on in its descriptors.
    pub(crate) fn free_unreachable_aside(&self) -> Result<()> {
        let store = self.store();
        // Listed before the rows are read: an inode is moved aside only
        // after its row is committed, so a listed file without a row has none.
        let listed = backing::list_dir(self.aside_dir.as_fd())?;
        // A row a power cut lost after its inode moved (aside rows are not
        // synced on their own) is rebuilt before anything is freed.
        let rows: HashSet<ObjectId> = store.aside_objects(self.id)?.into_iter().collect();
        let moved = || {
            listed
                .iter()
                .filter_map(|(name, ino, _)| moved_object(name, *ino))
        };
        let unrowed: Vec<ObjectId> = moved().filter(|o| !rows.contains(o)).collect();
        let restored = store.restore_aside(self.id, &unrowed)?;
        if !restored.is_empty() {
            tracing::info!(volume = %self.name, restored = restored.len(), "rebuilt the aside rows of moved-aside inodes");
            lock(&self.aside).extend(restored);
        }
        let doomed = store.unreachable_aside(self.id)?;
        let rows: HashSet<ObjectId> = store.aside_objects(self.id)?.into_iter().collect();
        let mut pinned: HashSet<u64> = store.presented(self.id)?.into_iter().collect();
        pinned.extend(lock(&self.held).iter().copied());
        let orphans: Vec<ObjectId> = moved()
            .filter(|o| !rows.contains(o) && !pinned.contains(&o.0))
            .collect();
        if doomed.is_empty() && orphans.is_empty() {
            return Ok(());
        }
        for object in doomed.iter().chain(&orphans) {
            if pinned.contains(&object.0) {
                let name = Self::aside_name(*object);
                match backing::openat(self.aside_fd(), &name, libc::O_WRONLY | libc::O_NOFOLLOW, 0)
                {
                    Ok(fd) => std::fs::File::from(fd).set_len(0)?,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            self.unlink_aside(*object)?;
        }
        store.forget_objects(self.id, &doomed)?;
        tracing::info!(volume = %self.name, freed = doomed.len() + orphans.len(), "freed moved-aside inodes no set needs");
        Ok(())
    }

    /// A rename moved directory `object` into the aside folder after its
    /// swap (`PreImages::swaps`): once that move is durable, the note is
    /// dropped. Best effort: a note left behind is checked, by handle,
    /// at the next start.
    pub(crate) fn swapped(&self, object: ObjectId) {
        let done = self
            .sync_aside_dir()
            .map_err(FsError::from)
            .and_then(|()| Ok(self.store().swap_done(self.id, object)?));
        if let Err(e) = done {
            tracing::warn!(volume = %self.name, object = object.0, "ending a rename's swap: {e}");
        }
    }

    /// Finishes the renames over a directory that a crash cut between the
    /// exchange and the move of the replaced directory into the aside
    /// folder: a noted directory still at the source's name (the same
    /// handle: not a later inode of its number) is moved now, as the
    /// rename would have. A directory elsewhere was never exchanged (the
    /// crash came first) or was moved already. Only before the live mount
    /// runs.
    fn finish_swaps(&self) -> Result<()> {
        let store = self.store();
        for (object, swap) in store.swaps(self.id)? {
            if let Some((parent, name)) = self.swapped_at(&swap)? {
                let aname = Self::aside_name(object);
                backing::renameat2(
                    parent.as_raw_fd(),
                    &name,
                    self.aside_dir.as_raw_fd(),
                    &aname,
                    0,
                )?;
                self.sync_aside_dir()?;
                self.mark_aside(object);
                tracing::info!(volume = %self.name, object = object.0, "finished a rename over a directory that a crash had cut short");
            }
            store.swap_done(self.id, object)?;
        }
        Ok(())
    }

    /// The directory holding `swap`'s directory at its noted place, and
    /// its name there, if it is there.
    fn swapped_at(&self, swap: &Swap) -> Result<Option<(OwnedFd, CString)>> {
        let parent = match backing::open_by_handle(
            self.root.as_fd(),
            &swap.at.parent,
            libc::O_PATH | libc::O_DIRECTORY,
        ) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let name = cstr(OsStr::from_bytes(&swap.at.name))?;
        let found = match backing::open_path(parent.as_fd(), &name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok((backing::handle_of(found.as_fd())?.0 == swap.handle).then_some((parent, name)))
    }

    /// Makes the aside folder's entries durable.
    fn sync_aside_dir(&self) -> io::Result<()> {
        let dir = backing::reopen(self.aside_dir.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        std::fs::File::from(dir).sync_all()
    }

    /// Undoes, in one pass over the aside folder, the steps a crash left
    /// half done. Only before the live mount runs, when nothing else
    /// builds or links there.
    ///
    /// - A truncation builds its successor under a name that is not an
    ///   inode number: any such file is a leftover and goes.
    /// - A rename or truncation that replaces a file a set needs first
    ///   links it into the folder, then replaces the live name: a moved
    ///   file with two links was cut between the two, so the replacement
    ///   never happened and the file is live, not aside (`link` of it
    ///   would fail, `umbra diff` would call it gone). Its hidden name and
    ///   aside row go.
    fn tidy_after_crash(&self) -> Result<()> {
        let dir = self.aside_dir.as_fd();
        for (name, ino, kind) in backing::list_dir(dir)? {
            if kind == FileKind::Directory {
                continue;
            }
            let c = cstr(&name)?;
            let Some(object) = moved_object(&name, ino) else {
                // SAFETY: c is a valid C string.
                if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } < 0 {
                    return Err(io::Error::last_os_error()).context(|| {
                        format!(
                            "volume {}: removing {name:?} from the aside folder",
                            self.name
                        )
                    });
                }
                continue;
            };
            if backing::statat(dir, &c)?.st_nlink < 2 {
                continue;
            }
            self.unlink_aside(object)?;
            self.store().drop_aside(self.id, object)?;
            tracing::info!(volume = %self.name, object = ino, "a replacement a crash cut short never happened: the file is live again");
        }
        Ok(())
    }

    /// Removes `object` from the aside folder, if it is there.
    fn unlink_aside(&self, object: ObjectId) -> Result<()> {
        let dir = self.aside_dir.as_fd();
        let name = Self::aside_name(object);
        let st = match backing::statat(dir, &name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let flags = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            libc::AT_REMOVEDIR
        } else {
            0
        };
        // SAFETY: name is a valid C string.
        if unsafe { libc::unlinkat(std::os::fd::AsRawFd::as_raw_fd(&dir), name.as_ptr(), flags) }
            < 0
        {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e)
                    .context(|| format!("volume {}: freeing aside inode {}", self.name, object.0));
            }
        }
        lock(&self.aside).remove(&object);
        Ok(())
    }

    /// Keeps the pin of `number` while the kernel may still use it.
    pub(crate) fn hold_pin(&self, number: u64) {
        lock(&self.held).insert(number);
    }

    /// The kernel forgot `number`: its pin goes if nothing else keeps it.
    pub(crate) fn release_pin(&self, number: u64) -> Result<()> {
        if lock(&self.held).remove(&number) {
            self.free_pin(number)?;
        }
        Ok(())
    }

    /// Removes the pin of `number` (an emptied inode moved aside by a
    /// truncation) once no live inode presents that number, unless a set
    /// still needs the inode itself: then it goes when the set does.
    pub(crate) fn free_pin(&self, number: u64) -> Result<()> {
        let store = self.store();
        if lock(&self.held).contains(&number)
            || store.presented(self.id)?.contains(&number)
            || store.is_aside(self.id, ObjectId(number))?
        {
            return Ok(());
        }
        self.unlink_aside(ObjectId(number))
    }

    /// The name an object takes in the aside folder.
    pub(crate) fn aside_name(object: ObjectId) -> std::ffi::CString {
        std::ffi::CString::new(object.0.to_string()).expect("digits have no NUL")
    }

    /// Opens a live object by identity for the snapshot browser: by its
    /// recorded file handle, else as `name` in the live directory `parent`
    /// (checked to be the same inode). None if it cannot be found.
    pub(crate) fn open_object(
        &self,
        object: ObjectId,
        parent: Option<(BorrowedFd<'_>, &OsStr)>,
    ) -> Result<OwnedFd> {
        if object == self.root_object {
            return Ok(backing::reopen_path(self.root.as_fd())?);
        }
        if let Some((dir, name)) = parent
            && let Ok(fd) = backing::open_path(dir, &cstr(name)?)
            && backing::fstat(fd.as_fd())?.st_ino == object.0
        {
            return Ok(fd);
        }
        if let Some(handle) = self.store().handle(self.id, object)? {
            let fd = backing::open_by_handle(
                self.root.as_fd(),
                &handle,
                libc::O_PATH | libc::O_NOFOLLOW,
            )?;
            return Ok(fd);
        }
        Err(io::Error::from_raw_os_error(libc::ESTALE)).context(|| {
            format!(
                "volume {}: object {} is gone from the live volume",
                self.name, object.0
            )
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ensure_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: c is a valid C string.
    let ret = unsafe { libc::mkdirat(std::os::fd::AsRawFd::as_raw_fd(&parent), c.as_ptr(), 0o700) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    backing::openat(
        parent,
        &c,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// The object an entry of the aside folder holds, if it is named by its
/// own inode number, as every moved inode is (a truncation's half-built
/// successor is not).
fn moved_object(name: &OsStr, ino: u64) -> Option<ObjectId> {
    (name.to_str()?.parse::<u64>().ok()? == ino).then_some(ObjectId(ino))
}
