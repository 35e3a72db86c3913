//! A live volume: its backing directory, opened before anything is mounted
//! over it, the daemon's hidden folder inside it, its place in the store,
//! and its copy-on-write state. Shared by the live mount (which mutates it)
//! and the snapshot browser (which reads unchanged objects from it).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use umbra_store::{Epoch, ObjectId, Store, VolumeId};

use crate::backing::{self, cstr};
use crate::cow::{Clock, Cow};
use crate::error::Context;
use crate::{HIDDEN_DIR, Result};

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
        let aside = backing::list_dir(aside_dir.as_fd())?
            .into_iter()
            .map(|(_, ino, _)| ObjectId(ino))
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
        Ok(Arc::new(Volume {
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
            cow,
            open_writes: Mutex::new(None),
        }))
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

    /// Frees the aside inodes no remaining set can reach. An inode whose
    /// number a live inode presents (a truncation's alias) keeps existing,
    /// emptied, so that the number cannot be handed out twice. A file still
    /// open through the live mount lives on in its descriptors.
    pub(crate) fn free_unreachable_aside(&self) -> Result<()> {
        let store = self.store();
        let doomed = store.unreachable_aside(self.id)?;
        if doomed.is_empty() {
            return Ok(());
        }
        let presented: HashSet<u64> = store.presented(self.id)?.into_iter().collect();
        let dir = self.aside_dir.as_fd();
        for object in &doomed {
            let name = Self::aside_name(*object);
            let st = match backing::statat(dir, &name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            if presented.contains(&object.0) {
                let fd = backing::openat(dir, &name, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
                std::fs::File::from(fd).set_len(0)?;
                continue;
            }
            let flags = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::AT_REMOVEDIR
            } else {
                0
            };
            // SAFETY: name is a valid C string.
            if unsafe {
                libc::unlinkat(std::os::fd::AsRawFd::as_raw_fd(&dir), name.as_ptr(), flags)
            } < 0
            {
                return Err(io::Error::last_os_error())
                    .context(|| format!("volume {}: freeing aside inode {}", self.name, object.0));
            }
            self.aside
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(object);
        }
        store.forget_objects(self.id, &doomed)?;
        tracing::info!(volume = %self.name, freed = doomed.len(), "freed moved-aside inodes no set needs");
        Ok(())
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
