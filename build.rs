//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates
//! the tonic clients and servers for every Keel package.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let files = proto_files("proto/keel")?;

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(&files)?;
    // `compile_fds` does not write a descriptor set itself, so write the one
    // that reflection and the gateway load at run time.
    fs::write(
        out_dir.join("keel_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

/// Every `.proto` below `dir`, relative to `proto/`, in a stable order.
fn proto_files(dir: &str) -> std::io::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::from(dir)];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                let relative = path.strip_prefix("proto").unwrap_or(&path);
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    Ok(found)
}
