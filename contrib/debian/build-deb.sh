#!/usr/bin/env bash
# Builds target/debian/ds01-slices_VERSION_amd64.deb: the release binary, the man pages and
# completions generated from the clap definition (ds01-slices-assets), the units and maintainer
# scripts of contrib/debian/, the Docker wrapper and the example configuration. Then lintian on it
# (errors fail; warnings and the tags kept on purpose are listed in contrib/debian/README.md).
# Needs cargo-deb (`cargo install cargo-deb`) and, for the check, lintian.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

cargo build --release --bins
rm -rf target/assets
target/release/ds01-slices-assets target/assets >/dev/null
deb=$(cargo deb --no-build --strip 2>&1 | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb did not print a package path: $deb" >&2; exit 1; }
echo "$deb"
if command -v lintian >/dev/null 2>&1; then
    lintian --fail-on error --display-level ">=warning" "$deb" >&2
fi
