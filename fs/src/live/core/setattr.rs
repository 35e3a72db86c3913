//! Changing an inode's attributes: chmod, chown, utimens and truncation
//! (a truncation to zero of a large file a set needs moves the inode aside
//! whole and gives its name to a new one), each preserved first.

use super::*;

impl LiveFs {
    pub fn setattr(&self, ino: u64, set: SetAttrs) -> Result<Attr> {
        let mut set = set;
        let truncating = set.size.is_some();
        if set.size == Some(0) && self.truncate_by_swap(ino)? {
            set.size = None;
        }
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let object = node.object;
        let handle_file = set.fh.map(|fh| self.file(fh)).transpose()?;
        let mut m = self.vol.cow.begin(&[object]);
        let mut truncate_file = None;
        if let Some(size) = set.size {
            let file = match &handle_file {
                Some(of) => of.file.try_clone(),
                None => backing::reopen(node_fd.as_fd(), libc::O_RDWR).map(backing::as_file),
            }?;
            let current = file.metadata()?.len();
            if size < current {
                m.blocks(object, node_fd.as_fd(), &file, size, current)?;
            } else {
                m.attr(object, node_fd.as_fd())?;
            }
            truncate_file = Some(file);
        }
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
        {
            m.attr(object, node_fd.as_fd())?;
        }
        m.preserve()?;
        debug_assert!(m.all_stored());
        if truncating && self.kills_privileges {
            let swapped;
            let file = match &truncate_file {
                Some(file) => file,
                None => {
                    swapped = backing::as_file(backing::reopen(node_fd.as_fd(), libc::O_RDWR)?);
                    &swapped
                }
            };
            self.drop_privileges(object, file, set.kill_suidgid)?;
        }
        let raw = node_fd.as_raw_fd();
        if set.uid.is_some() || set.gid.is_some() {
            // SAFETY: the empty path with AT_EMPTY_PATH names the fd itself.
            check(unsafe {
                libc::fchownat(
                    raw,
                    c"".as_ptr(),
                    set.uid.unwrap_or(u32::MAX),
                    set.gid.unwrap_or(u32::MAX),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if let Some(mode) = set.mode {
            let path = backing::proc_path(raw);
            // SAFETY: path is a valid C string.
            check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) })?;
        }
        if let (Some(size), Some(file)) = (set.size, &truncate_file) {
            if set.mtime.is_some() {
                file.set_len(size)?;
            } else {
                self.keeping_mtime(file.as_fd(), || Ok(file.set_len(size)?))?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let spec = |t: Option<TimeSet>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(TimeSet::Now) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(TimeSet::At(t)) => libc::timespec {
                    tv_sec: t.secs,
                    tv_nsec: i64::from(t.nanos),
                },
            };
            let times = [spec(set.atime), spec(set.mtime)];
            // SAFETY: times points at two timespecs.
            check(unsafe {
                libc::utimensat(
                    raw,
                    c"".as_ptr(),
                    times.as_ptr(),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if set.uid.is_some() || set.gid.is_some() || set.mode.is_some() || set.size.is_some() {
            // chown and truncation drop a file capability; chmod may go with it.
            node.forget_capability();
        }
        drop(m);
        self.attr_of(object, node_fd.as_fd())
    }

    /// Truncates a large single-link file to zero in O(1) when a set still
    /// needs its data: its inode moves aside whole and a new, empty inode
    /// takes its name and its inode number (an alias). Declines (Ok(false))
    /// whenever it cannot be sure: another link, an unknown or stale name,
    /// nothing to keep. Open handles of the file follow it to the successor,
    /// as they would follow a truncation in place.
    pub(super) fn truncate_by_swap(&self, ino: u64) -> Result<bool> {
        const WORTH_IT: u64 = 4 * umbra_store::BLOCK_SIZE;
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let st = backing::fstat(node_fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || st.st_nlink != 1
            || (st.st_size as u64) < WORTH_IT
        {
            return Ok(false);
        }
        let Some((parent, name)) = node.name() else {
            return Ok(false);
        };
        let _ns = self.vol.namespace_lock();
        let pnode = self.nodes.get(parent)?;
        let parent_fd = pnode.fd()?;
        let cname = cstr(&name)?;
        match backing::statat(parent_fd.as_fd(), &cname) {
            Ok(now) if now.st_ino == node.object.0 => {}
            _ => return Ok(false),
        }
        let object = node.object;
        let mut m = self.vol.cow.begin(&[pnode.object, object]);
        if !m.needs(object) {
            return Ok(false);
        }
        m.dir(pnode.object, parent_fd.as_fd())?;
        m.attr(object, node_fd.as_fd())?;
        m.handle(object, parent_fd.as_fd(), &name)?;
        m.aside(object);
        // The successor, built in the hidden folder with the same owner,
        // mode, xattrs and atime; its mtime and ctime are now, as a
        // truncation's are.
        let aside = self.vol.aside_fd();
        let tmp =
            std::ffi::CString::new(format!("new-{}", object.0)).map_err(|_| errno(libc::EINVAL))?;
        // SAFETY: tmp is a valid C string; a leftover from a crash goes.
        unsafe { libc::unlinkat(aside.as_raw_fd(), tmp.as_ptr(), 0) };
        let new = backing::openat(
            aside,
            &tmp,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o600,
        )?;
        // SAFETY: plain syscalls on an owned descriptor.
        check(unsafe { libc::fchown(new.as_raw_fd(), st.st_uid, st.st_gid) })?;
        // SAFETY: as above.
        check(unsafe { libc::fchmod(new.as_raw_fd(), st.st_mode & 0o7777) })?;
        for (xname, value) in backing::all_xattrs(node_fd.as_fd())? {
            let xname = std::ffi::CString::new(xname).map_err(|_| errno(libc::EINVAL))?;
            backing::set_xattr(new.as_fd(), &xname, &value, 0)?;
        }
        let times = [
            libc::timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
        ];
        // SAFETY: times points at two timespecs.
        check(unsafe { libc::futimens(new.as_raw_fd(), times.as_ptr()) })?;
        let successor = ObjectId(backing::fstat(new.as_fd())?.st_ino);
        m.preserve()?;
        crate::crash_point::crash_point("truncate-built");
        // A truncation never touches its directory: the swap's link and
        // rename must not show in the parent's times either.
        let pst = backing::fstat(parent_fd.as_fd())?;
        let aname = Volume::aside_name(object);
        let (pfd, afd) = (parent_fd.as_raw_fd(), aside.as_raw_fd());
        debug_assert!(m.all_stored());
        // SAFETY: both names are valid C strings.
        check(unsafe { libc::linkat(pfd, cname.as_ptr(), afd, aname.as_ptr(), 0) })?;
        // SAFETY: both names are valid C strings.
        if let Err(e) = check(unsafe { libc::renameat(afd, tmp.as_ptr(), pfd, cname.as_ptr()) }) {
            // SAFETY: aname is a valid C string.
            unsafe { libc::unlinkat(afd, aname.as_ptr(), 0) };
            return Err(e.into());
        }
        crate::crash_point::crash_point("truncate-swapped");
        let parent_times = [
            libc::timespec {
                tv_sec: pst.st_atime,
                tv_nsec: pst.st_atime_nsec,
            },
            libc::timespec {
                tv_sec: pst.st_mtime,
                tv_nsec: pst.st_mtime_nsec,
            },
        ];
        // SAFETY: parent_times points at two timespecs.
        check(unsafe {
            libc::utimensat(
                pfd,
                c"".as_ptr(),
                parent_times.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        m.born(successor);
        self.vol.mark_aside(object);
        self.vol.store().set_alias(self.vol.id(), successor, ino)?;
        let path_fd = backing::open_path(parent_fd.as_fd(), &cname)?;
        self.nodes
            .repoint(ino, successor, path_fd, Some((parent, name)));
        // An earlier successor that now moved aside presents nothing.
        self.retire_alias(object)?;
        let mut files = lock(&self.files);
        for of in files.values_mut().filter(|f| f.object == object) {
            let file = backing::as_file(backing::reopen(new.as_fd(), of.access)?);
            *of = Arc::new(OpenFile {
                file,
                object: successor,
                access: of.access,
            });
        }
        Ok(true)
    }
}
