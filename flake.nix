# chrysalis: Nix entry points for the binaries and the reproducible image build.
#
# NOT EVALUATED: Nix cannot reach its binary caches or GitHub from the machine this was written on, so this
# file has never been evaluated or built, and there is no flake.lock yet (`nix flake lock` creates it; commit
# it so the Nix side is pinned too). Treat it as a careful first draft; the reference build is
# `cargo xtask image build` (docs/image.md), and this flake drives exactly that.
#
# What it offers:
#   nix build .#chrysalis            the workspace binaries (chrysalis-guest, chrysalis-host, chrysalis, xtask),
#                                    built with Rust 1.95.0 from rust-overlay and Cargo.lock.
#   nix build .#image-inputs-cpu     every input pinned in image/locks/cpu.lock, fetched as fixed-output
#                                    derivations (fetchurl with the lock's sha256) and laid out as the
#                                    builder's content-addressed cache (sha256/ab/abcd…). Needs the Debian
#                                    archive root: CHRYSALIS_DEBIAN_ARCHIVE=… nix build --impure .#image-inputs-cpu
#   nix run .#image-build -- --flavor cpu --out out/cpu
#                                    runs `xtask image build` with the host tools from nixpkgs (mmdebstrap,
#                                    apt, dpkg, bubblewrap) and the cache seeded from image-inputs-<flavor>.
#
# Why the image itself is an app, not a derivation: the builder makes its build root with mmdebstrap in root
# mode and runs every tool under bubblewrap; both need root (or user namespaces), which the Nix build sandbox
# does not give. `cargo fetch` inside the build also needs the crates index unless CARGO_HOME is pre-seeded.
# The bytes do not depend on Nix either way: every tool that shapes them comes from the locked Debian build
# root, so a Nix-driven build must give the same manifest.json as any other (that is the check to run).
{
  description = "chrysalis: attested confidential LLM inference node";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, rust-overlay }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; overlays = [ rust-overlay.overlays.default ]; };
      lib = pkgs.lib;
      # The toolchain the image build records in manifest.json (builders.rustc).
      rust = pkgs.rust-bin.stable."1.95.0".default;
      rustPlatform = pkgs.makeRustPlatform { cargo = rust; rustc = rust; };

      chrysalis = rustPlatform.buildRustPackage {
        pname = "chrysalis";
        version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;
        src = lib.cleanSourceWith {
          src = ./.;
          filter = path: type:
            let base = baseNameOf path;
            in !(builtins.elem base [ "target" ".cache" "out" "result" ]);
        };
        cargoLock.lockFile = ./Cargo.lock;
        nativeBuildInputs = [ pkgs.pkg-config pkgs.python313 ];
        buildInputs = [ pkgs.python313 ];
        # pyo3 links the Python it is pointed at; inside the image the runtime is built against Debian's
        # libpython3.13 by the image builder instead (docs/image.md), so this build is for host-side use.
        PYO3_PYTHON = "${pkgs.python313}/bin/python3.13";
        # Integration tests need QEMU, network namespaces and the sim TEE: run them with `cargo test` outside Nix.
        doCheck = false;
      };

      # The Debian archive root is machine configuration, never written into the repository.
      debianArchive =
        let a = builtins.getEnv "CHRYSALIS_DEBIAN_ARCHIVE";
        in if a == "" then throw "set CHRYSALIS_DEBIAN_ARCHIVE to a Debian archive root and pass --impure" else a;

      # The builder's cache layout (chrysalis_image::cache): sha256/<first two hex>/<digest>.
      imageInputs = flavor:
        let
          lock = builtins.fromTOML (builtins.readFile (./image/locks + "/${flavor}.lock"));
          blob = name: url: sha256: {
            name = "sha256/${builtins.substring 0 2 sha256}/${sha256}";
            path = pkgs.fetchurl { inherit url sha256; name = lib.strings.sanitizeDerivationName name; };
          };
          debs = map (d: blob (baseNameOf d.path) "${debianArchive}/${d.path}" d.sha256) (lock.deb or [ ]);
          python = map (p: blob p.filename p.url p.sha256) (lock.python or [ ]);
        in
        pkgs.linkFarm "chrysalis-image-inputs-${flavor}" (debs ++ python);

      imageBuild = pkgs.writeShellApplication {
        name = "chrysalis-image-build";
        runtimeInputs = [ chrysalis rust pkgs.mmdebstrap pkgs.apt pkgs.dpkg pkgs.bubblewrap pkgs.coreutils pkgs.gnutar ];
        text = ''
          flavor=cpu
          for ((i = 1; i <= $#; i++)); do
            if [ "''${!i}" = "--flavor" ]; then j=$((i + 1)); flavor="''${!j}"; fi
          done
          if [ "$(id -u)" != 0 ]; then
            echo "the image build needs root (mmdebstrap --mode=root, bubblewrap)" >&2
            exit 1
          fi
          cache="''${CHRYSALIS_CACHE:-$PWD/.cache}"
          mkdir -p "$cache"
          # Seed the writable cache with the fixed-output inputs (the builder re-verifies every file).
          inputs=$(nix build --impure --no-link --print-out-paths ".#image-inputs-$flavor")
          cp -rnL "$inputs/sha256" "$cache/"
          export CHRYSALIS_CACHE="$cache"
          # The checkout (flavors, locks, the runtime's sources), not the store copy xtask was built from.
          export CHRYSALIS_REPO="$PWD"
          exec xtask image build "$@"
        '';
      };
    in
    {
      packages.${system} = {
        default = chrysalis;
        inherit chrysalis;
        image-inputs-cpu = imageInputs "cpu";
        image-inputs-gpu = imageInputs "gpu";
      };

      apps.${system}.image-build = {
        type = "app";
        program = "${imageBuild}/bin/chrysalis-image-build";
      };

      devShells.${system}.default = pkgs.mkShell {
        packages = [ rust pkgs.python313 pkgs.mmdebstrap pkgs.apt pkgs.dpkg pkgs.bubblewrap pkgs.qemu pkgs.cpio pkgs.zstd ];
      };
    };
}
