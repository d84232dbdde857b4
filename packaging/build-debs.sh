#!/usr/bin/env bash
# Makes the Debian packages cairn-controller, cairn-agent and cairn-cli from the
# binaries Cargo already built, without building anything again:
#
#   cargo build -p cairn-controller -p cairn-agent -p cairn-cli --bins   # or the tests' build
#   bash packaging/build-debs.sh                       # -> target/debian/*.deb
#   bash packaging/build-debs.sh --deb-version 0.2.0-1 --output /tmp/debs
#   bash packaging/build-debs.sh --profile release     # from target/release instead
#
# The packages' metadata (dependencies, maintainer scripts, units, conffiles) is
# `[package.metadata.deb]` in controller/, agent/ and cli/Cargo.toml. cargo-deb is
# installed from crates.io if missing (a pinned version); `--install-only` does
# just that. Binaries are stripped (debug info is for developers, not hosts).
set -euo pipefail

CARGO_DEB_VERSION=3.8.0

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --deb-version VERSION  --output DIR  --profile dev|release  --fast  --install-only"
}

deb_version=""
output=""
profile="dev"
fast=""
install_only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --deb-version) deb_version="${2:?--deb-version needs a value}"; shift 2 ;;
        --output) output="${2:?--output needs a directory}"; shift 2 ;;
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        --fast) fast="--fast"; shift ;;
        --install-only) install_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-debs.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# cargo finds `cargo-deb` on PATH or in $CARGO_HOME/bin; so does this check.
installed="$(cargo deb --version 2>/dev/null || true)"
if [ "${installed##* }" != "$CARGO_DEB_VERSION" ]; then
    echo "build-debs.sh: installing cargo-deb $CARGO_DEB_VERSION (found: ${installed:-none})" >&2
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi
[ -n "$install_only" ] && exit 0

# Where Cargo put the binaries (CARGO_TARGET_DIR and config respected).
target_dir="$(cargo metadata --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
case "$profile" in
    dev|debug) profile=dev; profile_dir=debug ;;
    *) profile_dir="$profile" ;;
esac
output="${output:-$target_dir/debian}"
mkdir -p "$output"

for pair in cairn-controller:cairn-controller cairn-agent:cairn-agent cairn-cli:cairn; do
    pkg="${pair%%:*}"
    bin="${pair#*:}"
    if [ ! -x "$target_dir/$profile_dir/$bin" ]; then
        echo "build-debs.sh: $target_dir/$profile_dir/$bin is missing; build it first: cargo build -p $pkg --bins --profile $profile" >&2
        exit 1
    fi
done

for pkg in cairn-controller cairn-agent cairn-cli; do
    # --no-build: package what is there. --quiet: cargo-deb's one warning here is
    # that it does not build with the dev profile itself, which it does not need to.
    # --strip: the dev profile keeps line tables, which would triple the size.
    # shellcheck disable=SC2086 # $fast is empty or one word
    cargo deb -p "$pkg" --no-build --profile "$profile" --strip --quiet $fast \
        ${deb_version:+--deb-version "$deb_version"} \
        --output "$output/"
done
