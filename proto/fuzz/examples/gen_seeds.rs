//! Write the seed corpora to `seeds/TARGET/NAME` (next to this package's Cargo.toml).
//! Run from `proto/fuzz`: `cargo run --example gen_seeds`.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, seeds) in nts_proto_fuzz::seeds::all() {
        let tdir = dir.join(target);
        std::fs::create_dir_all(&tdir)?;
        for (name, data) in seeds {
            std::fs::write(tdir.join(name), &data)?;
            println!("{target}/{name}: {} bytes", data.len());
        }
    }
    Ok(())
}
