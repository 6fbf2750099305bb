//! Archive member reading (`fetch`) against crafted archives: an ordinary member reads back, and
//! decompression bombs (a 1.5 MB .tar.gz holding 1.5 GB of zeros, a tar header claiming 2^62 bytes,
//! a wheel member of 300 MB of zeros) are refused with bounded memory. The archives are written here,
//! streaming, so the test itself stays small. One test holds every bomb so that the peak RSS it
//! checks is its own.

use std::io::{Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use octet_materials::fetch::{MAX_MEMBER_BYTES, read_tar_gz_member, read_zip_member};

/// The bar: a bomb is refused with peak RSS under 256 MiB.
const MAX_RSS_BYTES: u64 = 256 << 20;

/// 1.5 GB: the size of the reported bomb's content (1.5 MB gzipped).
const BOMB_BYTES: u64 = 1_500_000_000;

/// Appends a member of `size` zero bytes, streamed.
fn append_zeros<W: Write>(tar: &mut tar::Builder<W>, name: &str, size: u64) {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, name, std::io::repeat(0).take(size)).unwrap();
}

/// Peak resident set size of this process (Linux `VmHWM`), if known.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn message(e: octet_core::Error) -> String {
    e.to_string()
}

#[test]
fn tar_gz_member_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pkg-1.0.tar.gz");
    let mut tar = tar::Builder::new(GzEncoder::new(std::fs::File::create(&path).unwrap(), Compression::fast()));
    append_zeros(&mut tar, "pkg/other.bin", 1000);
    let body = b"formula,target\nNaCl,-2.1\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_cksum();
    tar.append_data(&mut h, "pkg/data.csv", &body[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    assert_eq!(read_tar_gz_member(&path, "pkg/data.csv").unwrap(), body);
    let e = message(read_tar_gz_member(&path, "pkg/missing.csv").unwrap_err());
    assert!(e.contains("no such member") && e.contains("2 entries"), "{e}");
}

#[test]
fn archive_bombs_are_refused_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();

    // 1.5 GB of zeros, then a small member, gzipped: about 1.5 MB on disk.
    let bomb = dir.path().join("bomb-1.0.tar.gz");
    let mut tar = tar::Builder::new(GzEncoder::new(std::fs::File::create(&bomb).unwrap(), Compression::default()));
    append_zeros(&mut tar, "bomb/zeros.csv", BOMB_BYTES);
    append_zeros(&mut tar, "bomb/after.csv", 10);
    tar.into_inner().unwrap().finish().unwrap();
    let on_disk = std::fs::metadata(&bomb).unwrap().len();
    assert!(on_disk < 4_000_000, "{on_disk} bytes");

    // The huge member itself: refused from its header, before reading.
    let e = message(read_tar_gz_member(&bomb, "bomb/zeros.csv").unwrap_err());
    assert!(e.contains("bomb-1.0.tar.gz") && e.contains("bomb/zeros.csv"), "{e}");
    assert!(e.contains(&format!("member is {BOMB_BYTES} bytes")), "{e}");
    // A member behind it: the scan stops at the archive's decompressed-byte budget.
    let e = message(read_tar_gz_member(&bomb, "bomb/after.csv").unwrap_err());
    assert!(e.contains("bomb/after.csv") && e.contains("decompression bomb"), "{e}");

    // A header claiming 2^62 bytes (no data follows).
    let liar = dir.path().join("liar-1.0.tar.gz");
    let mut gz = GzEncoder::new(std::fs::File::create(&liar).unwrap(), Compression::fast());
    let mut h = tar::Header::new_gnu();
    h.set_path("liar/data.csv").unwrap();
    h.set_size(1 << 62);
    h.set_cksum();
    gz.write_all(h.as_bytes()).unwrap();
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap();
    let e = message(read_tar_gz_member(&liar, "liar/data.csv").unwrap_err());
    assert!(e.contains(&format!("member is {} bytes", 1u64 << 62)), "{e}");

    // A wheel whose member inflates to 300 MB of zeros.
    let wheel = dir.path().join("bomb-1.0-py3-none-any.whl");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1));
    z.start_file("bomb/data.csv", opts).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..300 {
        z.write_all(&chunk).unwrap();
    }
    z.finish().unwrap();
    let e = message(read_zip_member(&wheel, "bomb/data.csv").unwrap_err());
    assert!(e.contains("bomb/data.csv") && e.contains(&format!("the {MAX_MEMBER_BYTES} read into memory")), "{e}");

    if let Some(peak) = peak_rss() {
        eprintln!("peak RSS {:.1} MiB", peak as f64 / (1 << 20) as f64);
        assert!(peak < MAX_RSS_BYTES, "peak RSS {peak} bytes");
    }
}

#[test]
fn a_member_file_that_is_not_an_archive_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.tar.gz");
    std::fs::write(&path, b"not gzip").unwrap();
    let e = message(read_tar_gz_member(Path::new(&path), "a.csv").unwrap_err());
    assert!(e.contains("x.tar.gz") && e.contains("not a readable .tar.gz"), "{e}");
}
