//! The filesystems mounted for real through the crate's API: live
//! operations, sets, and the browser showing each set's instant.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use umbra_fs::{
    Browser, MountHandle, MountOptions, Volume, commit_set, mount_live, mount_snapshots,
};
use umbra_store::{SetInfo, Store, StoreOptions, Timestamp};

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    volume: Arc<Volume>,
    browser: Arc<Browser>,
    live: PathBuf,
    snaps: PathBuf,
    mounts: Vec<MountHandle>,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let (backing, live, snaps, state) = (
            dir.path().join("backing"),
            dir.path().join("live"),
            dir.path().join("snaps"),
            dir.path().join("state"),
        );
        for d in [&backing, &live, &snaps] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let store = Arc::new(Store::open(&state, StoreOptions::default()).expect("store"));
        let volume = Volume::open(store.clone(), "data", &backing).expect("volume");
        let browser = Browser::new(store.clone(), vec![volume.clone()]).expect("browser");
        let opts = MountOptions::default();
        let mounts = vec![
            mount_live(volume.clone(), &live, &opts).expect("mount live"),
            mount_snapshots(browser.clone(), &snaps, &opts).expect("mount snapshots"),
        ];
        Rig {
            _dir: dir,
            store,
            volume,
            browser,
            live,
            snaps,
            mounts,
        }
    }

    fn snapshot(&self, name: &str) -> SetInfo {
        let set = commit_set(
            &self.store,
            &[self.volume.clone()],
            name.into(),
            None,
            Timestamp::default(),
        )
        .expect("commit");
        self.browser.refresh().expect("refresh");
        set
    }

    fn at(&self, set: &str) -> PathBuf {
        self.snaps.join(set).join("data")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = m.unmount();
        }
    }
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn a_set_keeps_its_instant_while_the_live_volume_changes() {
    let rig = Rig::new();
    let live = &rig.live;
    fs::write(live.join("report.txt"), b"v1").expect("write");
    fs::create_dir(live.join("dir")).expect("mkdir");
    fs::write(live.join("dir/big"), vec![7u8; 300_000]).expect("write big");
    fs::hard_link(live.join("report.txt"), live.join("dir/link")).expect("link");
    std::os::unix::fs::symlink("report.txt", live.join("sym")).expect("symlink");
    fs::set_permissions(live.join("report.txt"), fs::Permissions::from_mode(0o640)).expect("chmod");
    rig.snapshot("one");

    fs::write(live.join("report.txt"), b"v2 longer").expect("overwrite");
    let mut big = fs::OpenOptions::new()
        .write(true)
        .open(live.join("dir/big"))
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&mut big, b"XYZ", 70_000).expect("pwrite");
    drop(big);
    fs::rename(live.join("dir"), live.join("moved")).expect("rename");
    fs::remove_file(live.join("sym")).expect("unlink");
    fs::set_permissions(live.join("report.txt"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(live.join("new"), b"new").expect("new file");
    rig.snapshot("two");
    fs::remove_dir_all(live.join("moved")).expect("rm -rf");
    fs::remove_file(live.join("report.txt")).expect("rm");

    let one = rig.at("one");
    assert_eq!(read(&one.join("report.txt")), b"v1");
    assert_eq!(read(&one.join("dir/link")), b"v1");
    assert_eq!(read(&one.join("dir/big")), vec![7u8; 300_000]);
    assert_eq!(
        fs::read_link(one.join("sym")).expect("readlink"),
        Path::new("report.txt")
    );
    assert_eq!(
        fs::metadata(one.join("report.txt")).expect("stat").mode() & 0o7777,
        0o640
    );
    assert_eq!(
        fs::metadata(one.join("report.txt")).expect("stat").ino(),
        fs::metadata(one.join("dir/link")).expect("stat").ino()
    );
    assert!(!one.join("new").exists());
    let mut names: Vec<_> = fs::read_dir(&one)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "report.txt", "sym"]);

    let two = rig.at("two");
    assert_eq!(read(&two.join("report.txt")), b"v2 longer");
    let mut big2 = vec![7u8; 300_000];
    big2[70_000..70_003].copy_from_slice(b"XYZ");
    assert_eq!(read(&two.join("moved/big")), big2);
    assert!(!two.join("sym").exists());
    assert_eq!(read(&two.join("new")), b"new");
    assert_ne!(
        fs::metadata(one.join("report.txt")).expect("stat").ino(),
        fs::metadata(two.join("report.txt")).expect("stat").ino()
    );
    assert_eq!(
        fs::read_link(rig.snaps.join("latest")).expect("latest"),
        Path::new("two")
    );
    assert!(
        !fs::read_dir(live)
            .expect("ls")
            .any(|e| e.expect("entry").file_name() == ".umbra")
    );
    let err = fs::write(one.join("x"), b"x").expect_err("snapshots are read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}
