//! Device-mapper through its ioctl interface (include/uapi/linux/dm-ioctl.h, version 4).
//!
//! Why not the `devicemapper` crate: it generates its bindings with bindgen against libdevmapper's
//! headers (libclang and libdevmapper-dev on the build machine) and links libdevmapper unless told
//! not to, none of which fits a static musl PID 1 or a reproducible image build. Init needs three
//! calls with one target each: create a device, load a table, resume it. The request buffers are
//! built by safe code below (and unit-tested); only the ioctl call itself is unsafe.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, bail};

use super::verity::Target;

/// `sizeof(struct dm_ioctl)`.
const HEADER: usize = 312;
/// `sizeof(struct dm_target_spec)`.
const SPEC: usize = 40;
/// `DM_NAME_LEN`: names are NUL-terminated within it.
const NAME_LEN: usize = 128;
/// Interface version we speak; the kernel accepts any request with major 4.
const VERSION: [u32; 3] = [4, 0, 0];
/// `DM_READONLY_FLAG`: the table opens its devices read-only (dm-verity requires it).
const READONLY_FLAG: u32 = 1 << 0;

// Field offsets in struct dm_ioctl.
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;

nix::ioctl_readwrite!(dm_dev_create, 0xfd, 3, [u8; HEADER]);
nix::ioctl_readwrite!(dm_dev_suspend, 0xfd, 6, [u8; HEADER]);
nix::ioctl_readwrite!(dm_table_load, 0xfd, 9, [u8; HEADER]);

/// Builds a request: the dm_ioctl header for device `name` with `flags`, followed by `payload`.
/// Returns the bytes, 8-byte padded as the kernel expects.
fn request(name: &str, flags: u32, target_count: u32, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    if name.is_empty() || name.len() >= NAME_LEN || name.contains('/') {
        bail!("bad device-mapper name {name:?}");
    }
    let size = (HEADER + payload.len()).next_multiple_of(8);
    let mut buf = vec![0u8; size];
    for (i, v) in VERSION.iter().enumerate() {
        put_u32(&mut buf, 4 * i, *v);
    }
    put_u32(&mut buf, OFF_DATA_SIZE, u32::try_from(size)?);
    put_u32(&mut buf, OFF_DATA_START, HEADER as u32);
    put_u32(&mut buf, OFF_TARGET_COUNT, target_count);
    put_u32(&mut buf, OFF_FLAGS, flags);
    buf[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name.as_bytes());
    buf[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    Ok(buf)
}

/// Builds one `struct dm_target_spec` followed by its NUL-terminated parameter string.
fn target_spec(t: &Target) -> anyhow::Result<Vec<u8>> {
    if t.kind.len() >= 16 || t.params.contains('\0') {
        bail!("bad device-mapper target {:?}", t.kind);
    }
    let size = (SPEC + t.params.len() + 1).next_multiple_of(8);
    let mut spec = vec![0u8; size];
    // sector_start stays 0: one target covers the whole device.
    spec[8..16].copy_from_slice(&t.sectors.to_ne_bytes());
    put_u32(&mut spec, 20, u32::try_from(size)?); // `next`: offset of the following spec
    spec[24..24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
    spec[SPEC..SPEC + t.params.len()].copy_from_slice(t.params.as_bytes());
    Ok(spec)
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

type Ioctl = unsafe fn(i32, *mut [u8; HEADER]) -> nix::Result<i32>;

/// Sends one request and returns the kernel's answer (the header it wrote back).
fn call(control: &File, what: &str, op: Ioctl, req: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    // An 8-byte aligned copy: struct dm_ioctl holds a u64 and the kernel reads it in place.
    let mut words: Vec<u64> = req
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks of 8")))
        .collect();
    // SAFETY: `words` is 8-byte aligned and `req.len()` (≥ HEADER) bytes long, the size written in
    // the header's data_size, so the kernel reads and writes only inside it; the fd is open for
    // the whole call.
    unsafe { op(control.as_raw_fd(), words.as_mut_ptr().cast()) }
        .with_context(|| format!("device-mapper {what} failed"))?;
    Ok(words.iter().flat_map(|w| w.to_ne_bytes()).collect())
}

/// Creates device-mapper device `name` with the single read-only `target`, activates it, and
/// returns its device number (`/dev/dm-<minor>` under devtmpfs).
pub(crate) fn create_readonly(name: &str, target: &Target) -> anyhow::Result<(u64, u64)> {
    let control = File::options()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .context("cannot open /dev/mapper/control (is dm-mod loaded?)")?;
    let created = call(
        &control,
        &format!("create {name}"),
        dm_dev_create,
        request(name, 0, 0, &[])?,
    )?;
    let dev = u64::from_ne_bytes(created[OFF_DEV..OFF_DEV + 8].try_into()?);
    let table = request(name, READONLY_FLAG, 1, &target_spec(target)?)?;
    call(
        &control,
        &format!("load table of {name}"),
        dm_table_load,
        table,
    )?;
    // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes, which makes the loaded table live.
    call(
        &control,
        &format!("resume {name}"),
        dm_dev_suspend,
        request(name, 0, 0, &[])?,
    )?;
    Ok((nix::sys::stat::major(dev), nix::sys::stat::minor(dev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn header_layout_matches_dm_ioctl_h() {
        let b = request("chrysalis-rootfs", READONLY_FLAG, 1, &[7; 13]).unwrap();
        assert_eq!(b.len(), 328); // 312 + 13, rounded up to 8
        assert_eq!([u32_at(&b, 0), u32_at(&b, 4), u32_at(&b, 8)], [4, 0, 0]);
        assert_eq!(u32_at(&b, OFF_DATA_SIZE), 328);
        assert_eq!(u32_at(&b, OFF_DATA_START), 312);
        assert_eq!(u32_at(&b, OFF_TARGET_COUNT), 1);
        assert_eq!(u32_at(&b, OFF_FLAGS), 1);
        assert_eq!(&b[48..64], b"chrysalis-rootfs");
        assert_eq!(b[64], 0);
        assert_eq!(&b[312..325], &[7; 13]);
        assert!(b[325..].iter().all(|&x| x == 0));
    }

    #[test]
    fn target_spec_layout_matches_dm_ioctl_h() {
        let t = Target {
            sectors: 20480,
            kind: "verity",
            params: "1 2 3".into(),
        };
        let s = target_spec(&t).unwrap();
        assert_eq!(s.len(), 48); // 40 + "1 2 3\0", rounded up to 8
        assert_eq!(u64::from_ne_bytes(s[0..8].try_into().unwrap()), 0);
        assert_eq!(u64::from_ne_bytes(s[8..16].try_into().unwrap()), 20480);
        assert_eq!(u32_at(&s, 16), 0);
        assert_eq!(u32_at(&s, 20), 48);
        assert_eq!(&s[24..31], b"verity\0");
        assert_eq!(&s[40..46], b"1 2 3\0");
    }

    #[test]
    fn bad_names_and_targets_are_refused() {
        assert!(request("", 0, 0, &[]).is_err());
        assert!(request("a/b", 0, 0, &[]).is_err());
        assert!(request(&"x".repeat(128), 0, 0, &[]).is_err());
        let long = Target {
            sectors: 1,
            kind: "a-very-long-target",
            params: String::new(),
        };
        assert!(target_spec(&long).is_err());
    }
}
