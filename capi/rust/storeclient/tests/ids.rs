//! The shared id vectors (tests/id_vectors.txt, also checked by the C and Python tests): a key's
//! id is the same in every binding. No store is needed.

use std::path::PathBuf;

use storeclient::ObjectId;

fn vectors_path() -> PathBuf {
    match std::env::var_os("STORE_ID_VECTORS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/id_vectors.txt"),
    }
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex: {s:?}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn keys_hash_to_the_shared_vectors() {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut checked = 0;
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "malformed line: {line:?}");
        let key = unhex(fields[0]);
        let id = ObjectId::from_key(&key[..]);
        assert_eq!(id.to_hex(), fields[1], "key {:?} ({})", fields[0], fields[2]);
        // The id read back from its hex is the same id; a key that looks like one is not.
        assert_eq!(ObjectId::from_hex(fields[1]).unwrap(), id);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} vectors in {}", path.display());
}
