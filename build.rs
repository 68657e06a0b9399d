//! Compiles `proto/` with protox (pure Rust), so the build needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // The registry's migrations are embedded by `sqlx::migrate!`.
    println!("cargo:rerun-if-changed=migrations");
    let descriptors =
        protox::compile(["remote.proto", "types.proto", "write_v2.proto"], ["proto"])?;
    prost_build::Config::new()
        // Chunk data as `Bytes`: decoded from a `Bytes` frame without copying.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
