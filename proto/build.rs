//! Generates the key-sync gRPC code when the `grpc` feature is on, with a
//! vendored `protoc` so a fresh machine needs no install step.

fn main() {
    println!("cargo:rerun-if-changed=grpc/keysync.proto");
    #[cfg(feature = "grpc")]
    {
        let protoc =
            protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform");
        std::env::set_var("PROTOC", protoc);
        tonic_prost_build::configure()
            .build_transport(false)
            .compile_protos(&["grpc/keysync.proto"], &["grpc"])
            .expect("compiling grpc/keysync.proto");
    }
}
