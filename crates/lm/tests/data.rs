//! Tokenizer round trip, shard format validation, deterministic batches.

use octet_lm::data::{Batches, Shard, TextTokenizer, prepare, write_shard};

const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n\
First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n";

#[test]
fn trained_bpe_roundtrips_text_and_compresses() {
    let text = TEXT.repeat(20);
    let tok = TextTokenizer::train(&text, 320).unwrap();
    let ids = tok.encode(&text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert!(ids.len() < text.len() / 2, "{} tokens for {} bytes", ids.len(), text.len());
    // Unseen text (and bytes) still encodes and decodes exactly.
    let other = "Zebra \u{e9}t\u{e9} 42!";
    assert_eq!(tok.decode(&tok.encode(other).unwrap()).unwrap(), other);
}

#[test]
fn shard_roundtrips_and_rejects_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.bin");
    let toks: Vec<u32> = (0..1000).map(|i| (i * 7) % 300).collect();
    write_shard(&p, &toks, 300).unwrap();
    let s = Shard::open(&p).unwrap();
    assert_eq!(s.len(), 1000);
    assert_eq!((0..1000).map(|i| s.get(i)).collect::<Vec<_>>(), toks);

    let bytes = std::fs::read(&p).unwrap();
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, &bytes[..bytes.len() - 1]).unwrap();
    let e = Shard::open(&bad).err().unwrap().to_string();
    assert!(e.contains("bad.bin") && e.contains("count"), "{e}");
    let mut m = bytes.clone();
    m[0] = b'X';
    std::fs::write(&bad, &m).unwrap();
    assert!(Shard::open(&bad).err().unwrap().to_string().contains("magic"));
    let mut m = bytes.clone();
    m[32] = 0xff; // token 0 -> 0x..ff >= 300
    m[33] = 0xff;
    std::fs::write(&bad, &m).unwrap();
    assert!(Shard::open(&bad).err().unwrap().to_string().contains("tokens"));
    assert!(Shard::open(&dir.path().join("missing.bin")).err().unwrap().to_string().contains("missing.bin"));
}

#[test]
fn shard_count_whose_byte_size_wraps_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wrap.bin");
    write_shard(&p, &[1, 2], 300).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    // 2^63 + 2 tokens of 2 bytes "are" 4 bytes when the product wraps: the file's exact size.
    bytes[16..24].copy_from_slice(&((1u64 << 63) + 2).to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = Shard::open(&p).err().expect("a wrapped count is refused").to_string();
    assert!(e.contains("wrap.bin") && e.contains("count") && e.contains("9223372036854775810 tokens"), "{e}");
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = Shard::open(&p).err().expect("a huge count is refused").to_string();
    assert!(e.contains("more than usize::MAX"), "{e}");
}

#[test]
fn batches_are_deterministic_and_shifted() {
    let dir = tempfile::tempdir().unwrap();
    let text = TEXT.repeat(30);
    let prep = prepare(&text, dir.path(), 320, 0.1, None).unwrap();
    let a = Batches::new(Shard::open(&prep.train).unwrap(), 4, 16, 7).unwrap();
    let b = Batches::new(Shard::open(&prep.train).unwrap(), 4, 16, 7).unwrap();
    let (x1, y1) = a.train_batch(3);
    assert_eq!((x1.clone(), y1.clone()), b.train_batch(3));
    assert_ne!(x1, a.train_batch(4).0);
    for r in 0..4 {
        assert_eq!(x1[r * 16 + 1..(r + 1) * 16], y1[r * 16..(r + 1) * 16 - 1]);
    }
    assert!(!Shard::open(&prep.val).unwrap().is_empty());
}
