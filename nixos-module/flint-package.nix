# flint built from this repository with nixpkgs' Rust tooling, for the VM tests and for users
# who deploy with Nix.
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "flint";
  version = "0.1.0";
  src = lib.cleanSource ../.;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "--package" "flint" ];
  # The integration tests need etcd, openssl and loopback networking; CI runs them.
  doCheck = false;
  meta = {
    description = "First-boot cluster join and health checks for bare-metal nodes";
    license = lib.licenses.asl20;
    mainProgram = "flint";
  };
}
