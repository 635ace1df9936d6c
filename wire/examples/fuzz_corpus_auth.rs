//! Writes the seeds of the auth fuzz targets into `fuzz/corpus/<target>/seed-<name>`:
//! `cargo run -p nacelle-wire --example fuzz_corpus_auth`.
fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, name, bytes) in nacelle_wire::fuzzing_auth::seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
