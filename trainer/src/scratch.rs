//! Room in the scratch space that downloads (model, data, a checkpoint to resume from)
//! and staged uploads (the final model) go through. Each is checked before it starts,
//! against the file system's free space and, in a pod, the scratch volume's size limit
//! (`JANUS_SCRATCH_LIMIT_BYTES`, from `spec.workers.scratchSizeLimit`): past the limit
//! the kubelet evicts the pod, which would restart the gang into the same download; a
//! full disk midway would fail a download that a check names up front.

use std::path::Path;

use janus_crds::env;

use crate::error::{Error, Result};

/// Fails with a message naming what does not fit when `need` bytes for `what` are more
/// than `dir` has left.
pub fn ensure_room(dir: &Path, need: u64, what: &str) -> Result<()> {
    let limit = crate::dist::env::whole_number(env::SCRATCH_LIMIT_BYTES, "a number of bytes")?;
    let base = staging_base();
    let used = match limit {
        Some(_) => usage(&base),
        None => 0,
    };
    check(need, free_bytes(dir)?, limit.map(|l| (l, used)), what, dir)
}

/// [`ensure_room`] for what every rank of the pod stages a copy of at about the same
/// time (the model, a checkpoint to resume from).
pub fn ensure_room_per_rank(dir: &Path, need: u64, what: &str) -> Result<()> {
    match local_ranks() {
        1 => ensure_room(dir, need, what),
        n => ensure_room(
            dir,
            need * n,
            &format!("{what}, a copy for each of {n} local ranks"),
        ),
    }
}

/// Ranks the launcher started in this pod (`LOCAL_WORLD_SIZE`), 1 outside it.
fn local_ranks() -> u64 {
    std::env::var("LOCAL_WORLD_SIZE")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// The scratch directories' parent (`JANUS_STAGING_DIR`, else the system temp dir):
/// what the size limit counts.
pub fn staging_base() -> std::path::PathBuf {
    std::env::var_os("JANUS_STAGING_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn check(need: u64, free: u64, limit: Option<(u64, u64)>, what: &str, dir: &Path) -> Result<()> {
    let left = match limit {
        Some((limit, used)) => free.min(limit.saturating_sub(used)),
        None => free,
    };
    if need <= left {
        return Ok(());
    }
    let why = match limit {
        Some((limit, used)) if limit.saturating_sub(used) < free => format!(
            "the scratch volume's limit of {} ({} already used; spec.workers.scratchSizeLimit) leaves {}",
            gib(limit),
            gib(used),
            gib(left)
        ),
        _ => format!("{} has {} free", dir.display(), gib(free)),
    };
    Err(Error::Config(format!(
        "not enough scratch space for {what}: it needs {}, and {why}; raise spec.workers.scratchSizeLimit (or free the disk)",
        gib(need)
    )))
}

fn gib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Bytes an unprivileged writer may still use on the file system of `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Config(format!("{}: a NUL in the path", dir.display())))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::io(
            format!("statvfs {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Bytes of the files under `dir` (what an emptyDir's size limit counts).
fn usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => usage(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn a_need_beyond_the_free_disk_or_the_volume_limit_is_refused_naming_both_sizes() {
        let d = Path::new("/scratch");
        assert!(check(10 * G, 20 * G, None, "the model download", d).is_ok());
        assert!(check(10 * G, 20 * G, Some((15 * G, 4 * G)), "x", d).is_ok());
        let e = check(
            10 * G,
            20 * G,
            Some((15 * G, 6 * G)),
            "the model download",
            d,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not enough scratch space for the model download: it needs 10.00 GiB")
                && e.contains("limit of 15.00 GiB (6.00 GiB already used; spec.workers.scratchSizeLimit) leaves 9.00 GiB"),
            "{e}"
        );
        let e = check(30 * G, 20 * G, Some((100 * G, 0)), "the checkpoint", d)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/scratch has 20.00 GiB free"), "{e}");
        assert_eq!(
            check(30 * G, 20 * G, None, "y", d).unwrap_err().exit_code(),
            janus_crds::exit_code::BAD_INPUT
        );
    }

    #[test]
    fn usage_counts_the_files_below_a_directory() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/x"), vec![0u8; 1000]).unwrap();
        std::fs::write(t.path().join("y"), vec![0u8; 24]).unwrap();
        assert_eq!(usage(t.path()), 1024);
        assert!(free_bytes(t.path()).unwrap() > 0);
    }
}
