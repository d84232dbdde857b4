//! Checks that the vendored protoc which `dev/protoc` hands to etcd-client's build
//! script is present (cargo fetched it as this crate's build-dependency).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=no vendored protoc for this platform ({e}); set PROTOC");
    }
}
