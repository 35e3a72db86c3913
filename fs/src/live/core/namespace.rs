//! Namespace changes of the live mount: create, mknod, mkdir, symlink,
//! link, unlink, rmdir and rename, each under the volume's namespace lock,
//! its directories preserved first; an unlinked or replaced inode a set
//! needs moves aside instead of going.

use super::*;

impl LiveFs {
    /// Creates a name in `parent` with `make`, after preserving the
    /// directory; `make` runs as the caller, so the backing filesystem
    /// gives the new object its owner, group and mode as it would natively
    /// (see caller.rs). The object is born in this epoch.
    pub(super) fn make(
        &self,
        parent: u64,
        name: &OsStr,
        caller: Caller,
        make: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<Option<File>>,
    ) -> Result<(Attr, ObjectId, Option<File>)> {
        Self::creatable(parent, name)?;
        let cname = cstr(name)?;
        let _ns = self.vol.namespace_lock();
        let pnode = self.nodes.get(parent)?;
        let parent_fd = pnode.fd()?;
        let mut m = self.vol.cow.begin(&[pnode.object]);
        m.dir(pnode.object, parent_fd.as_fd())?;
        m.preserve()?;
        debug_assert!(m.all_stored());
        let file = {
            let _as = AsCaller::enter(caller)?;
            make(parent_fd.as_fd(), &cname)?
        };
        let fd = backing::open_path(parent_fd.as_fd(), &cname)?;
        let st = backing::fstat(fd.as_fd())?;
        let object = ObjectId(st.st_ino);
        m.born(object);
        drop(m);
        let attr = self.attr_of(object, fd.as_fd())?;
        self.nodes.remember(object, fd, parent, name.to_owned());
        Ok((attr, object, file))
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> Result<Attr> {
        let (attr, _, _) = self.make(parent, name, caller, |dir, c| {
            // SAFETY: c is a valid C string.
            check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev) }).map(|_| None)
        })?;
        Ok(attr)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> Result<Attr> {
        let (attr, _, _) = self.make(parent, name, caller, |dir, c| {
            // SAFETY: c is a valid C string.
            check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode & 0o7777) })
                .map(|_| None)
        })?;
        Ok(attr)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> Result<Attr> {
        let target = cstr(target)?;
        let (attr, _, _) = self.make(parent, name, caller, |dir, c| {
            // SAFETY: both are valid C strings.
            check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })
                .map(|_| None)
        })?;
        Ok(attr)
    }

    /// Creates and opens a regular file. If the name exists and the caller
    /// did not ask for O_EXCL, opens it instead (the kernel raced a lookup).
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Attr, u64)> {
        let made = self.make(parent, name, caller, |dir, c| {
            let fd = backing::openat(
                dir,
                c,
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW,
                mode & 0o7777,
            )?;
            Ok(Some(backing::as_file(fd)))
        });
        match made {
            Ok((attr, object, Some(file))) => {
                // A new file has no capability: no need to ask before its first write.
                if let Some(node) = self.node_of(object) {
                    node.lost_capability();
                }
                Ok((attr, self.add_file(file, object, libc::O_RDWR)))
            }
            Ok((_, _, None)) => Err(errno(libc::EIO)),
            Err(e) if e.errno() == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                let attr = self.lookup(parent, name)?;
                let fh = self.open(attr.ino, flags)?;
                let attr = if flags & libc::O_TRUNC != 0 {
                    self.setattr(
                        attr.ino,
                        SetAttrs {
                            size: Some(0),
                            fh: Some(fh),
                            kill_suidgid: caller.without_fsetid(),
                            ..Default::default()
                        },
                    )?
                } else {
                    attr
                };
                Ok((attr, fh))
            }
            Err(e) => Err(e),
        }
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        Self::creatable(newparent, newname)?;
        let cname = cstr(newname)?;
        let _ns = self.vol.namespace_lock();
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        if self.vol.is_aside(node.object) {
            return Err(errno(libc::ENOENT));
        }
        let pnode = self.nodes.get(newparent)?;
        let parent_fd = pnode.fd()?;
        let mut m = self.vol.cow.begin(&[pnode.object, node.object]);
        m.dir(pnode.object, parent_fd.as_fd())?;
        m.attr(node.object, node_fd.as_fd())?;
        m.preserve()?;
        debug_assert!(m.all_stored());
        // SAFETY: AT_EMPTY_PATH links the inode behind the fd itself.
        check(unsafe {
            libc::linkat(
                node_fd.as_raw_fd(),
                c"".as_ptr(),
                parent_fd.as_raw_fd(),
                cname.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        drop(m);
        let attr = self.attr_of(node.object, node_fd.as_fd())?;
        let fd = backing::reopen_path(node_fd.as_fd())?;
        self.nodes
            .remember(node.object, fd, newparent, newname.to_owned());
        Ok(attr)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    /// unlink and rmdir: an inode a snapshot may need loses its last name by
    /// moving into the hidden folder, O(1), instead of being freed.
    pub(super) fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        if Self::hidden(parent, name) {
            return Err(errno(libc::ENOENT));
        }
        let cname = cstr(name)?;
        let _ns = self.vol.namespace_lock();
        let pnode = self.nodes.get(parent)?;
        let parent_fd = pnode.fd()?;
        let (fd, st) = self.child(parent_fd.as_fd(), name)?;
        match (dir, is_dir(&st)) {
            (true, false) => return Err(errno(libc::ENOTDIR)),
            (false, true) => return Err(errno(libc::EISDIR)),
            _ => {}
        }
        let object = ObjectId(st.st_ino);
        let mut m = self.vol.cow.begin(&[pnode.object, object]);
        m.dir(pnode.object, parent_fd.as_fd())?;
        let last_name = dir || st.st_nlink <= 1;
        let aside = m.needs(object) && last_name;
        if m.needs(object) {
            if dir && !backing::list_dir(fd.as_fd())?.is_empty() {
                return Err(errno(libc::ENOTEMPTY));
            }
            m.leaving(pnode.object, parent_fd.as_fd(), object, fd.as_fd(), name)?;
            if aside {
                m.aside(object);
            }
        }
        m.preserve()?;
        debug_assert!(m.all_stored());
        if aside {
            let aname = Volume::aside_name(object);
            // SAFETY: both names are valid C strings.
            check(unsafe {
                libc::renameat(
                    parent_fd.as_raw_fd(),
                    cname.as_ptr(),
                    self.vol.aside_fd().as_raw_fd(),
                    aname.as_ptr(),
                )
            })?;
            self.vol.mark_aside(object);
        } else {
            let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
            // SAFETY: cname is a valid C string.
            check(unsafe { libc::unlinkat(parent_fd.as_raw_fd(), cname.as_ptr(), flags) })?;
        }
        if last_name {
            self.retire_alias(object)?;
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        if Self::hidden(parent, name) {
            return Err(errno(libc::ENOENT));
        }
        Self::creatable(newparent, newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let (csrc, cdst) = (cstr(name)?, cstr(newname)?);
        let _ns = self.vol.namespace_lock();
        let pnode = self.nodes.get(parent)?;
        let parent_fd = pnode.fd()?;
        let npnode = self.nodes.get(newparent)?;
        let newparent_fd = npnode.fd()?;
        let (src_fd, src_st) = self.child(parent_fd.as_fd(), name)?;
        let dst = match self.child(newparent_fd.as_fd(), newname) {
            Ok(found) => Some(found),
            Err(e) if e.errno() == libc::ENOENT => None,
            Err(e) => return Err(e),
        };
        let src = ObjectId(src_st.st_ino);
        let mut objects = vec![pnode.object, npnode.object, src];
        if let Some((_, st)) = &dst {
            objects.push(ObjectId(st.st_ino));
        }
        let mut m = self.vol.cow.begin(&objects);
        m.dir(pnode.object, parent_fd.as_fd())?;
        m.dir(npnode.object, newparent_fd.as_fd())?;
        m.leaving(pnode.object, parent_fd.as_fd(), src, src_fd.as_fd(), name)?;
        m.place(src, || {
            Some(Place {
                parent: self.nodes.place_handle(newparent)?,
                name: newname.as_bytes().to_vec(),
            })
        });
        // The replaced inode, if a snapshot may need it, goes aside.
        let mut aside = None;
        if let Some((dst_fd, dst_st)) = &dst {
            let object = ObjectId(dst_st.st_ino);
            if object != src && m.needs(object) {
                m.leaving(
                    npnode.object,
                    newparent_fd.as_fd(),
                    object,
                    dst_fd.as_fd(),
                    newname,
                )?;
                if !exchange
                    && flags & libc::RENAME_NOREPLACE == 0
                    && (is_dir(dst_st) || dst_st.st_nlink <= 1)
                {
                    if is_dir(dst_st) {
                        if !is_dir(&src_st) {
                            return Err(errno(libc::EISDIR));
                        }
                        if !backing::list_dir(dst_fd.as_fd())?.is_empty() {
                            return Err(errno(libc::ENOTEMPTY));
                        }
                    } else if is_dir(&src_st) {
                        return Err(errno(libc::ENOTDIR));
                    }
                    m.aside(object);
                    if is_dir(dst_st) {
                        // Between the exchange and the move below, the
                        // replaced directory sits at the source's name.
                        m.swap(
                            object,
                            Swap {
                                handle: backing::handle_of(dst_fd.as_fd())?.0,
                                at: Place {
                                    parent: backing::handle_of(parent_fd.as_fd())?.0,
                                    name: name.as_bytes().to_vec(),
                                },
                            },
                        );
                    }
                    aside = Some((object, is_dir(dst_st)));
                }
            }
        }
        m.preserve()?;
        debug_assert!(m.all_stored());
        let (pfd, npfd, afd) = (
            parent_fd.as_raw_fd(),
            newparent_fd.as_raw_fd(),
            self.vol.aside_fd().as_raw_fd(),
        );
        match aside {
            None => renameat2(pfd, &csrc, npfd, &cdst, flags)?,
            Some((object, false)) => {
                // Keep the replaced file by a second name first, so the
                // rename itself stays one atomic replacement.
                let aname = Volume::aside_name(object);
                // SAFETY: both names are valid C strings.
                check(unsafe { libc::linkat(npfd, cdst.as_ptr(), afd, aname.as_ptr(), 0) })?;
                crate::crash_point::crash_point("replace-linked");
                if let Err(e) = renameat2(pfd, &csrc, npfd, &cdst, flags) {
                    // SAFETY: aname is a valid C string.
                    unsafe { libc::unlinkat(afd, aname.as_ptr(), 0) };
                    return Err(e.into());
                }
                self.vol.mark_aside(object);
            }
            Some((object, true)) => {
                // Directories cannot be linked: swap, then move the (empty)
                // replaced directory aside from the source name. A crash
                // between the two is finished at the next start
                // (`Volume::finish_swaps`), or the source name would show
                // the replaced directory.
                crate::crash_point::crash_point("rename-noted");
                renameat2(pfd, &csrc, npfd, &cdst, libc::RENAME_EXCHANGE)?;
                crate::crash_point::crash_point("rename-swapped");
                let aname = Volume::aside_name(object);
                // SAFETY: both names are valid C strings.
                check(unsafe { libc::renameat(pfd, csrc.as_ptr(), afd, aname.as_ptr()) })?;
                self.vol.mark_aside(object);
                self.vol.swapped(object);
            }
        }
        self.renamed(src, newparent, newname);
        if let Some((_, st)) = &dst {
            let object = ObjectId(st.st_ino);
            if exchange {
                self.renamed(object, parent, name);
            } else if object != src && (is_dir(st) || st.st_nlink <= 1) {
                // The replaced inode lost its last name.
                self.retire_alias(object)?;
            }
        }
        Ok(())
    }

    /// Keeps the name hint of a moved inode current.
    pub(super) fn renamed(&self, object: ObjectId, parent: u64, name: &OsStr) {
        if let Ok(node) = self.nodes.get(self.nodes.ino_of(object))
            && node.object == object
        {
            node.set_name(Some((parent, name.to_owned())));
        }
    }
}
