//! Open files and directories: open, read, write (its blocks preserved
//! first), fsync, lseek, fallocate, release; and directory streams read
//! from the backing directory at the kernel's offset.

use super::*;

impl LiveFs {
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let access = if flags & libc::O_ACCMODE == libc::O_RDONLY {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        let keep = flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NONBLOCK);
        let file = backing::as_file(backing::reopen(node_fd.as_fd(), access | keep)?);
        let fh = self.add_file(file, node.object, access);
        if flags & libc::O_TRUNC != 0 && access == libc::O_RDWR {
            self.setattr(
                ino,
                SetAttrs {
                    size: Some(0),
                    fh: Some(fh),
                    ..Default::default()
                },
            )?;
        }
        Ok(fh)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let of = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let n = backing::pread_full(&of.file, &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: Option<Caller>,
        writer: Caller,
    ) -> Result<u32> {
        let of = self.file(fh)?;
        let end = offset + data.len() as u64;
        let mut m = self.vol.cow.begin(&[of.object]);
        let ahead = m.write_blocks(of.object, of.file.as_fd(), &of.file, offset, end)?;
        if let Err(e) = m.preserve() {
            if let Some(w) = ahead {
                self.vol.cow.end_ahead(w);
            }
            return Err(e);
        }
        debug_assert!(m.all_stored());
        if let Some(w) = ahead {
            let (vol, of) = (self.vol.clone(), of.clone());
            let spawned = std::thread::Builder::new()
                .name("umbra-ahead".into())
                .spawn(move || vol.cow.keep_ahead(w, &of.file));
            if spawned.is_err() {
                self.vol.cow.end_ahead(w);
            }
        }
        self.drop_privileges(of.object, &of.file, kill_suidgid)?;
        // Only the pwrite allocates: it runs as the writer, so that the
        // blocks reserved for root and quota limits hold as natively.
        let written = self.keeping_mtime(of.file.as_fd(), || {
            let _as = AsCaller::writing(writer)?;
            Ok(write_at(&of.file, data, offset)?)
        })?;
        Ok(written as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let of = self.file(fh)?;
        if datasync {
            of.file.sync_data()?
        } else {
            of.file.sync_all()?
        }
        Ok(())
    }

    /// Makes a directory's entries durable on the backing filesystem.
    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let dir = backing::as_file(backing::reopen(
            node_fd.as_fd(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?);
        dir.sync_all()?;
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE on the backing file. Reads and writes use
    /// pread/pwrite, so moving the backing descriptor's offset disturbs
    /// nothing.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let of = self.file(fh)?;
        // SAFETY: plain syscall on an owned descriptor.
        let at = unsafe { libc::lseek64(of.file.as_raw_fd(), offset, whence) };
        if at < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(at)
    }

    pub fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    /// As natively (`file_modified`), an allocation counts as a change of
    /// the file's data: it drops set-id bits for a caller without
    /// CAP_FSETID and any file capability; it allocates as the caller.
    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        caller: Caller,
    ) -> Result<()> {
        let of = self.file(fh)?;
        let fd = of.file.as_fd();
        let mut m = self.vol.cow.begin(&[of.object]);
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            m.blocks(
                of.object,
                fd,
                &of.file,
                offset,
                offset.saturating_add(length),
            )?;
        } else if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
            m.blocks(of.object, fd, &of.file, offset, u64::MAX)?;
        } else {
            m.attr(of.object, fd)?;
        }
        m.preserve()?;
        debug_assert!(m.all_stored());
        self.drop_privileges(of.object, &of.file, caller.without_fsetid())?;
        self.keeping_mtime(fd, || {
            let _as = AsCaller::writing(caller)?;
            // SAFETY: plain syscall on an owned descriptor.
            check(unsafe {
                libc::fallocate64(fd.as_raw_fd(), mode, offset as i64, length as i64)
            })?;
            Ok(())
        })?;
        // The backing filesystem drops a file capability on fallocate.
        if let Some(node) = self.node_of(of.object) {
            node.forget_capability();
        }
        Ok(())
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let parent = if ino == ROOT {
            ROOT
        } else {
            let st = backing::statat(node_fd.as_fd(), c"..")?;
            self.nodes.ino_of(ObjectId(st.st_ino))
        };
        let stream = backing::DirStream::open(node_fd.as_fd())?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let open = OpenDir {
            ino,
            parent,
            cursor: Mutex::new(DirCursor { stream, at: 0 }),
        };
        lock(&self.dirs).insert(fh, Arc::new(open));
        Ok(fh)
    }

    /// Hands `add` the entries of open directory `fh` from `offset` on,
    /// each with the offset that follows it, until `add` says the reply is
    /// full (true: that entry was not taken, and is the next one read).
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        add: &mut dyn FnMut(&Listing, u64) -> bool,
    ) -> Result<()> {
        let open = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))?;
        let mut cursor = lock(&open.cursor);
        if offset == 0 || cursor.at != offset {
            cursor.stream.seek(offset);
            cursor.at = offset;
        }
        loop {
            let before = cursor.at;
            let Some(entry) = cursor.stream.next()? else {
                return Ok(());
            };
            cursor.at = entry.next;
            let ino = match entry.name.as_encoded_bytes() {
                b"." => open.ino,
                b".." => open.parent,
                _ if Self::hidden(open.ino, &entry.name) => continue,
                _ => self.nodes.ino_of(ObjectId(entry.ino)),
            };
            let listing = Listing {
                ino,
                kind: entry.kind,
                name: entry.name,
            };
            if add(&listing, entry.next) {
                cursor.stream.seek(before);
                cursor.at = before;
                return Ok(());
            }
        }
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }
}
