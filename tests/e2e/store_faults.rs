//! The store on a filesystem of its own. A tmpfs with a size limit: when it is full, an upload
//! cannot be journaled and is refused with a 503 before anything reaches AWS; once space
//! returns, uploads work again without a restart. An ext4 filesystem on a loop device, mounted
//! `errors=remount-ro`: after a filesystem error the kernel turns it read-only under the
//! running daemon (as a failing disk does), and uploads are refused the same way.

use std::path::PathBuf;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = world()
            .dir
            .path()
            .join(format!("small-fs-{}", world().next()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (the test suite runs as root)"
        );
        SmallFs(dir)
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
        let _ = f.sync_all();
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A daemon whose store is the file `db`.
async fn bridge_with_store(db: PathBuf) -> Bridge {
    let mut b = Bridge::start(
        &Tokens::new(),
        Opts {
            env: vec![(
                "HSM_BRIDGE__STORE__PATH".into(),
                db.to_string_lossy().into_owned(),
            )],
            ..Default::default()
        },
    )
    .await;
    b.db_path = db;
    b
}

/// An ext4 filesystem in a file, on a loop device, unmounted and detached when dropped.
struct LoopExt4 {
    dir: PathBuf,
    device: String,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (a loop device and mounting need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl LoopExt4 {
    fn mount() -> LoopExt4 {
        let base = world().dir.path().join(format!("ext4-{}", world().next()));
        let dir = base.join("mnt");
        std::fs::create_dir_all(&dir).expect("mount point");
        let image = base.join("image");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(32 << 20))
            .expect("image");
        let image = image.to_str().expect("path");
        let device = run("losetup", &["--find", "--show", image]);
        let fs = LoopExt4 { dir, device };
        run("mkfs.ext4", &["-q", &fs.device]);
        run(
            "mount",
            &[
                "-o",
                "errors=remount-ro",
                &fs.device,
                fs.dir.to_str().expect("path"),
            ],
        );
        fs
    }

    /// What a failing disk does: the kernel records a filesystem error, and ext4 turns
    /// read-only at once.
    fn fail(&self) {
        let name = self.device.trim_start_matches("/dev/");
        std::fs::write(
            format!("/sys/fs/ext4/{name}/trigger_fs_error"),
            "hsm-bridge test\n",
        )
        .expect("trigger an ext4 error");
        let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
        let line = mounts
            .lines()
            .find(|l| l.starts_with(&format!("{} ", self.device)))
            .expect("still mounted");
        assert!(
            line.split(' ')
                .nth(3)
                .is_some_and(|o| o.split(',').any(|f| f == "ro" || f == "emergency_ro")),
            "read-only now: {line}"
        );
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_turned_read_only_refuses_uploads_before_aws() {
    let fs = LoopExt4::mount();
    let mut b = bridge_with_store(fs.dir.join("hsm-bridge.db")).await;
    let material = secret(32);
    let key = b.vault_import("read-only", "aes", &material).await;
    let kms = b.kms().await;
    let upload = |alias: String| {
        json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION,
               "aws_param": {"Alias": alias}})
    };
    let (s, r) = b.upload(upload(format!("before-{}", world().next()))).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    prove_aes(
        &kms,
        r["aws_param"]["KeyID"].as_str().expect("KeyID"),
        &material,
    )
    .await;

    fs.fail();
    let before = kms_key_count(&kms).await;
    for i in 0..3 {
        let (s, r) = b.upload(upload(format!("ro-{i}-{}", world().next()))).await;
        assert_error(s, &r, 503, "store");
        assert!(
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("nothing was sent to AWS")),
            "{r}"
        );
    }
    assert_eq!(
        kms_key_count(&kms).await,
        before,
        "no upload reached CreateKey"
    );
    // Still serving: what needs no write is answered.
    let (s, v) = b.get("/healthz").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    b.stop().await;
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_uploads_before_aws_and_recovers() {
    let fs = SmallFs::mount("4m");
    let b = bridge_with_store(fs.0.join("hsm-bridge.db")).await;
    let material = secret(32);
    let key = b.vault_import("full-disk", "aes", &material).await;
    let kms = b.kms().await;
    let upload = |alias: String| {
        json!({"source_key_identifier": key, "kms": b.kms_name, "region": REGION,
               "aws_param": {"Alias": alias}})
    };

    let (s, r) = b.upload(upload(format!("first-{}", world().next()))).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let first = r["aws_param"]["KeyID"].as_str().expect("KeyID").to_owned();
    prove_aes(&kms, &first, &material).await;

    // Full: uploads are refused while no space is left, and work once it returns.
    let filler = fs.fill();
    let mut refused = 0;
    for i in 0..5 {
        let before = kms_key_count(&kms).await;
        let (s, r) = b
            .upload(upload(format!("full-{i}-{}", world().next())))
            .await;
        if s == StatusCode::CREATED {
            // SQLite may still fit a transaction into pages its write-ahead log already has:
            // then the attempt was journaled, and the upload is whole.
            let k = r["aws_param"]["KeyID"].as_str().expect("KeyID");
            prove_aes(&kms, k, &material).await;
            continue;
        }
        assert_error(s, &r, 503, "store");
        refused += 1;
        let after = kms_key_count(&kms).await;
        assert!(
            after == before
                || r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("scheduled for deletion")),
            "a refused upload left no enabled key: {r}"
        );
    }
    assert!(refused > 0, "a full store refused no upload");
    std::fs::remove_file(&filler).expect("free the space");
    let (s, r) = b.upload(upload(format!("after-{}", world().next()))).await;
    assert_eq!(s, StatusCode::CREATED, "space returned: {r}");
    let k = r["aws_param"]["KeyID"].as_str().expect("KeyID");
    prove_aes(&kms, k, &material).await;
    // Every key in KMS is either a whole upload or scheduled for deletion.
    for (id, state) in kms_keys(&kms).await {
        assert!(
            state == "Enabled" || state == "PendingDeletion",
            "key {id} is {state}"
        );
    }
    b.finish().await;
    drop(fs);
}
