# flint-boot built from this repository with nixpkgs' Rust tooling, for the boot-server module
# (services.flint-boot) and for users who deploy with Nix.
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "flint-boot";
  version = "0.1.0";
  src = lib.cleanSource ../.;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "--package" "flint-boot" ];
  # The integration tests need etcd, openssl, QEMU and loopback networking; CI runs them.
  doCheck = false;
  meta = {
    description = "Boot server for bare-metal nodes: HTTP for iPXE scripts and images, TFTP for the iPXE binaries, ProxyDHCP";
    license = lib.licenses.asl20;
    mainProgram = "flint-boot";
  };
}
