//! What the benches share: the captured Prometheus 2.42 bodies.

/// The 20 snappy-compressed bodies of `tests/data/prom-2.42` (2000 samples each), in
/// file-name order.
pub fn captured_bodies() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/prom-2.42");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/data/prom-2.42")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| std::fs::read(path).expect("body"))
        .collect()
}
