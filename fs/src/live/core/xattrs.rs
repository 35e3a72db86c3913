//! Extended attributes through the live mount, as the caller: get, list,
//! set (an ACL that drops set-group-ID does so) and remove, each
//! preserved first.

use super::*;

impl LiveFs {
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        let cname = cstr(name)?;
        if name == OsStr::new("security.capability") {
            // Asked before every write: a cached answer needs no descriptor.
            if let Some(known) = node.cached_capability() {
                return known.map_err(errno);
            }
            let node_fd = node.fd()?;
            return node
                .capability(|| {
                    backing::get_xattr(node_fd.as_fd(), &cname)
                        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
                })
                .map_err(errno);
        }
        let node_fd = node.fd()?;
        Ok(backing::get_xattr(node_fd.as_fd(), &cname)?)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        Ok(backing::list_xattrs(node_fd.as_fd())?)
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> Result<()> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let mut m = self.vol.cow.begin(&[node.object]);
        m.attr(node.object, node_fd.as_fd())?;
        m.preserve()?;
        debug_assert!(m.all_stored());
        let set = backing::set_xattr(node_fd.as_fd(), &cstr(name)?, value, flags);
        node.forget_capability();
        set?;
        if name == OsStr::new("system.posix_acl_access") {
            self.acl_kills_sgid(&node, caller)?;
        }
        Ok(())
    }

    /// Setting an access ACL drops the set-group-ID bit when the caller is
    /// outside the file's group and lacks CAP_FSETID (`posix_acl_update_mode`).
    /// The kernel asks for it
    /// with FUSE_SETXATTR_ACL_KILL_SGID, which needs FUSE_SETXATTR_EXT, a
    /// request layout fuser 0.18 cannot parse; the backing filesystem, set
    /// by root, keeps the bit.
    pub(super) fn acl_kills_sgid(&self, node: &Node, caller: Caller) -> Result<()> {
        if caller.uid == u32::MAX {
            return Ok(());
        }
        let fd = node.fd()?;
        let st = backing::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_ISGID == 0
            || privileges::in_group(caller, st.st_gid)
            || caller.without_fsetid().is_none()
        {
            return Ok(());
        }
        let path = backing::proc_path(fd.as_raw_fd());
        // SAFETY: path is a valid C string.
        check(unsafe { libc::chmod(path.as_ptr(), st.st_mode & 0o7777 & !libc::S_ISGID) })?;
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let mut m = self.vol.cow.begin(&[node.object]);
        m.attr(node.object, node_fd.as_fd())?;
        m.preserve()?;
        debug_assert!(m.all_stored());
        let removed = backing::remove_xattr(node_fd.as_fd(), &cstr(name)?);
        node.forget_capability();
        Ok(removed?)
    }
}
