//! Corpus sources against crafted packages: a `.deb` whose text files are symbolic links out of the
//! extraction (to `/etc/passwd` and to a secret beside the package) leaks nothing, a link that stays
//! inside is read, and a wheel that inflates to gigabytes is refused with bounded memory while a
//! single oversized member is only counted as too large. The packages are built here.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use octet_adapt::corpus::{self, Category, MAX_FILE_BYTES};
use octet_adapt::sources::{self, DomainPackage, GENERAL_ROOT, RawFile};
use octet_fetch::{Dist, Package};

/// The bar: a bomb is refused with peak RSS under 256 MiB.
const MAX_RSS_BYTES: u64 = 256 << 20;

const PKG: DomainPackage = DomainPackage {
    package: Package {
        name: "pythondata-cpu-bomb",
        version: "0.1",
        dist: Dist::Wheel { python_version: "3.10" },
        file: "pythondata_cpu_bomb-0.1-py3-none-any.whl",
    },
    licence: "ISC",
    root: "pythondata_cpu_bomb/verilog/",
};

/// Peak resident set size of this process (Linux `VmHWM`), if known.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

const DOC: &str = "Python is a programming language that lets you work quickly and integrate systems. ";

#[test]
fn deb_symlink_outside_the_extraction_root_leaks_nothing() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        eprintln!("skipped: dpkg-deb is not installed (the general corpus needs it too)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    let marker = "TOP-SECRET-MARKER-4711 ".repeat(10);
    std::fs::write(&secret, &marker).unwrap();

    // A package tree: one real document, a link inside the tree, links to files outside it.
    let tree = dir.path().join("pkg");
    let sources_dir = tree.join(GENERAL_ROOT);
    std::fs::create_dir_all(sources_dir.join("library")).unwrap();
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::write(
        tree.join("DEBIAN/control"),
        "Package: python3.11-doc\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n",
    )
    .unwrap();
    std::fs::write(sources_dir.join("library/os.rst.txt"), DOC.repeat(4)).unwrap();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, sources_dir.join(name)).unwrap();
    link(Path::new("/etc/passwd"), "passwd.rst.txt");
    link(&secret, "library/secret.txt");
    link(Path::new("../../../../../../../../../../etc/passwd"), "library/relative.rst");
    link(Path::new("os.rst.txt"), "library/alias.rst.txt");
    // A directory link out of the tree, and one back up to the root (a loop if followed).
    std::os::unix::fs::symlink(dir.path(), sources_dir.join("outside")).unwrap();
    std::os::unix::fs::symlink("..", sources_dir.join("library/up")).unwrap();

    let deb = dir.path().join("python3.11-doc_1.0_all.deb");
    let out = Command::new("dpkg-deb").args(["--root-owner-group", "-b"]).arg(&tree).arg(&deb).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let files = sources::read_general_deb(&deb).unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["library/alias.rst.txt", "library/os.rst.txt"], "only the tree's own files");
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    for f in &files {
        let text = String::from_utf8_lossy(&f.bytes);
        assert!(!text.contains("TOP-SECRET-MARKER"), "{} leaked the secret", f.path);
        assert!(passwd.is_empty() || f.bytes != passwd, "{} leaked /etc/passwd", f.path);
        assert!(!text.contains("root:"), "{} looks like /etc/passwd", f.path);
    }

    // The same through the whole pipeline: general.jsonl holds neither.
    let out_dir = dir.path().join("corpus");
    sources::build(&[], files, &out_dir, &mut |_| {}).unwrap();
    let general = std::fs::read_to_string(out_dir.join("general.jsonl")).unwrap();
    assert!(!general.contains("TOP-SECRET-MARKER") && !general.contains("root:"), "{general}");
}

fn deflated() -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated)
}

#[test]
fn wheel_bomb_is_refused_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    // 3,000 members of 1 MiB of zeros (each just under the per-file cap): about 3 MB on disk,
    // 3.1 GB decompressed.
    let wheel = dir.path().join(PKG.package.file);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    let zeros = vec![0u8; MAX_FILE_BYTES];
    for i in 0..3000 {
        z.start_file(format!("{}rtl/m{i}.sv", PKG.root), deflated()).unwrap();
        z.write_all(&zeros).unwrap();
    }
    z.finish().unwrap();
    let on_disk = std::fs::metadata(&wheel).unwrap().len();
    assert!(on_disk < 8_000_000, "{on_disk} bytes");

    let e = sources::read_wheel(&PKG, &wheel).err().expect("a bomb is refused").to_string();
    assert!(e.contains(PKG.package.file) && e.contains("decompression bomb"), "{e}");
    if let Some(peak) = peak_rss() {
        eprintln!("peak RSS {:.1} MiB", peak as f64 / (1 << 20) as f64);
        assert!(peak < MAX_RSS_BYTES, "peak RSS {peak} bytes");
    }
}

#[test]
fn oversized_wheel_member_is_counted_unread() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join(PKG.package.file);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    z.start_file(format!("{}rtl/big.sv", PKG.root), deflated()).unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..40 {
        z.write_all(&chunk).unwrap();
    }
    z.start_file(format!("{}rtl/small.sv", PKG.root), deflated()).unwrap();
    z.write_all(format!("module small;\n{}endmodule\n", "  // ok\n".repeat(20)).as_bytes()).unwrap();
    z.finish().unwrap();

    let files = sources::read_wheel(&PKG, &wheel).unwrap();
    let big = &files.iter().find(|(f, _)| f.path == "rtl/big.sv").unwrap().0;
    assert!(big.bytes.is_empty() && big.size == 40 << 20, "{} bytes read, size {}", big.bytes.len(), big.size);
    assert_eq!(files[1].1, Category::Design);

    let out = dir.path().join("corpus");
    let general = vec![RawFile::new("a.rst.txt", DOC.repeat(2).into())];
    let m = sources::build(&[(PKG, wheel)], general, &out, &mut |_| {}).unwrap();
    assert_eq!(m.dropped["domain"]["too_large"], corpus::Count { documents: 1, bytes: 40 << 20 });
    assert_eq!(m.domain.total.documents, 1);
}
