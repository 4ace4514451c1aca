# pkgs.flint and pkgs.flint-boot, built from this repository: the packages the modules' `package`
# options default to (nixpkgs has neither).
#
#   nixpkgs.overlays = [ (import ./nixos-module/overlay.nix) ];
final: _prev: {
  flint = final.callPackage ./flint-package.nix { };
  flint-boot = final.callPackage ./flint-boot-package.nix { };
}
