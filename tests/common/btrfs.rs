//! A btrfs filesystem of the test's own: a sparse image file in the test's
//! temp dir, formatted with mkfs.btrfs and loop-mounted (btrfs-progs is
//! installed with apt-get when missing, as .ci/run does). Subvolumes are
//! made with `btrfs subvolume create`. Dropping it unmounts it lazily, which
//! also frees its loop device.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::servers::ensure_installed;
use super::sys;

/// The image's size: sparse, so only what the test writes takes room.
const IMAGE_BYTES: u64 = 2 << 30;

pub struct LoopBtrfs {
    pub mount: PathBuf,
    image: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl LoopBtrfs {
    /// A new btrfs mounted at `dir/mnt`, its image at `dir/btrfs.img`.
    pub fn new(dir: &Path) -> LoopBtrfs {
        ensure_installed(&[("mkfs.btrfs", "btrfs-progs")]);
        let image = dir.join("btrfs.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).expect("creating the btrfs mountpoint");
        let file = std::fs::File::create(&image).expect("creating the btrfs image");
        file.set_len(IMAGE_BYTES).expect("sizing the btrfs image");
        drop(file);
        run(Command::new("mkfs.btrfs").arg("-q").arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        LoopBtrfs { mount, image }
    }

    /// A new subvolume `name` at the filesystem's top.
    pub fn subvolume(&self, name: &str) -> PathBuf {
        let path = self.mount.join(name);
        run(Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(&path));
        path
    }

    /// Every subvolume of the filesystem, by its path from the top, as
    /// `btrfs subvolume list` shows them.
    pub fn subvolumes(&self) -> Vec<String> {
        let all = Command::new("btrfs")
            .args(["subvolume", "list"])
            .arg(&self.mount)
            .output()
            .expect("btrfs subvolume list");
        String::from_utf8_lossy(&all.stdout)
            .lines()
            .filter_map(|l| l.split(" path ").nth(1).map(str::to_string))
            .collect()
    }

    pub fn image(&self) -> &Path {
        &self.image
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        for _ in 0..4 {
            if !sys::is_mounted(&self.mount) {
                break;
            }
            let _ = sys::lazy_unmount(&self.mount);
        }
    }
}
