//! Finding the hypervisor image and gunzipping it into the cache.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `4.17` from `xen-4.17-amd64.gz` (digits and dots after `xen-`, at least
/// one dot).
pub(super) fn version_from_name(p: &Path) -> Option<String> {
    let name = p.file_name()?.to_str()?;
    let rest = &name[name.find("xen-")? + 4..];
    let v: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let v = v.trim_end_matches('.');
    (v.contains('.') && v.starts_with(|c: char| c.is_ascii_digit())).then(|| v.to_string())
}

pub(super) fn read_magic(p: &Path, n: usize) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => return Err(format!("reading {}: {e}", p.display())),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

pub(super) fn is_gzip(p: &Path) -> Result<bool, String> {
    Ok(read_magic(p, 2)? == [0x1f, 0x8b])
}

pub(super) fn check_elf(p: &Path) -> Result<(), String> {
    if read_magic(p, 4)? == b"\x7fELF" {
        Ok(())
    } else {
        Err(format!("{} is not an ELF image", p.display()))
    }
}

/// `hv-sim-xen` in this workspace's target directory
/// ([`crate::kernel_build::target_root`]).
pub(super) fn cache_dir() -> PathBuf {
    crate::kernel_build::target_root().join("hv-sim-xen")
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) fn unique(stem: &str) -> String {
    format!(
        "{stem}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Gunzip `gz` into the cache unless a copy at least as new is there.
pub(super) fn extract(gz: &Path) -> Result<PathBuf, String> {
    let name = gz
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".gz").unwrap_or(n).to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "xen".to_string());
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = dir.join(&name);
    let src_time = std::fs::metadata(gz)
        .and_then(|m| m.modified())
        .map_err(|e| format!("reading the time of {}: {e}", gz.display()))?;
    if let Ok(m) = std::fs::metadata(&out)
        && m.len() > 0
        && m.modified().is_ok_and(|t| t >= src_time)
    {
        return Ok(out);
    }
    // Extract beside it under a unique name, then rename: tests running at
    // once never see a half-written image.
    let tmp = dir.join(unique(&format!(".{name}")));
    let result = (|| {
        let f = std::fs::File::open(gz).map_err(|e| format!("opening {}: {e}", gz.display()))?;
        let mut dec = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
        let mut w =
            std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        std::io::copy(&mut dec, &mut w)
            .map_err(|e| format!("gunzipping {} to {}: {e}", gz.display(), tmp.display()))?;
        drop(w);
        std::fs::rename(&tmp, &out)
            .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), out.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| out)
}
