//! The browser's tree volumes when the kernel refuses a backing file: the
//! file is read through the daemon instead (pread of the image's file), and
//! says so once. A refusal is made for real: browser B's images live inside
//! browser A's mount, which passthrough stacks one deep already, and the
//! kernel refuses a backing file as deep as the mount that asks (ELOOP).

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use umbra_fs::{Browser, MountHandle, MountOptions, Result, TreeImages, mount_snapshots};
use umbra_store::{NewSet, SetId, SetInfo, SetOrigin, Store, StoreOptions, Timestamp, VolumeId};

/// Tree images as directories: `<images>/<set id>`.
struct Images {
    volume: VolumeId,
    images: PathBuf,
}

impl TreeImages for Images {
    fn volume(&self) -> VolumeId {
        self.volume
    }

    fn name(&self) -> &str {
        "tree"
    }

    fn image(&self, set: SetId) -> Result<Option<OwnedFd>> {
        match File::open(self.images.join(set.0.to_string())) {
            Ok(f) => Ok(Some(f.into())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// A store with one set of one tree volume, its browser mounted at `at`
/// over images kept under `images`; returns the image dir of the set.
fn browser(state: &Path, images: &Path, at: &Path) -> (MountHandle, PathBuf, SetInfo) {
    let store = Arc::new(Store::open(state, StoreOptions::default()).expect("store"));
    let volume = store.ensure_volume("tree").expect("volume").id;
    let set = store
        .commit_set(&NewSet {
            name: "set".into(),
            label: None,
            origin: SetOrigin::default(),
            created: Timestamp::default(),
            volumes: vec![volume],
        })
        .expect("set");
    let tree: Arc<dyn TreeImages> = Arc::new(Images {
        volume,
        images: images.to_path_buf(),
    });
    let browser = Browser::new(store, Vec::new(), vec![tree]).expect("browser");
    fs::create_dir_all(at).expect("mkdir");
    let mount = mount_snapshots(browser, at, &MountOptions::default()).expect("mount");
    (mount, images.join(set.id.0.to_string()), set)
}

/// The log, as the daemon would write it.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_tree_file_the_kernel_refuses_to_pass_through_is_read_through_the_daemon() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (outer, outer_image, _) =
        browser(&root.join("a"), &root.join("images"), &root.join("snaps-a"));
    // B's images are the directories of A's set: B's set 1 is `1` there.
    let (inner, inner_image, _) = browser(
        &root.join("b"),
        &root.join("snaps-a/set/tree"),
        &root.join("snaps-b"),
    );
    assert_eq!(inner_image, root.join("snaps-a/set/tree/1"));
    let image = outer_image.join("1");
    fs::create_dir_all(&image).expect("mkdir image");
    let bytes: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
    fs::write(image.join("file"), &bytes).expect("write");
    let sparse = File::create(image.join("sparse")).expect("create");
    sparse.set_len(8 << 20).expect("size");
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"data", 4 << 20).expect("write");

    let through_a = root.join("snaps-a/set/tree/1/file");
    let through_b = root.join("snaps-b/set/tree/file");
    assert_eq!(fs::read(&through_a).expect("read through A"), bytes);
    assert_eq!(fs::read(&through_b).expect("read through B"), bytes);
    assert_eq!(fs::read(&through_b).expect("read again"), bytes);
    // SEEK_DATA answered from the image's file through both.
    let file = File::open(root.join("snaps-b/set/tree/sparse")).expect("open");
    // SAFETY: lseek on a descriptor we hold.
    let data = unsafe { libc::lseek64(file.as_raw_fd(), 0, libc::SEEK_DATA) };
    assert_eq!(data, 4 << 20);
    drop(file);
    let text =
        String::from_utf8_lossy(&log.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(
        text.contains("read by FUSE passthrough")
            && text.contains("refused a backing file")
            && text.contains("through the daemon from now on"),
        "{text}"
    );
    assert_eq!(
        text.matches("refused a backing file").count(),
        1,
        "said once: {text}"
    );
    inner.unmount().expect("unmount B");
    outer.unmount().expect("unmount A");
}
