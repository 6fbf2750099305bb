#!/usr/bin/env bash
# Rebuild crates/cli/assets/python-tutorial.txt, the corpus `octet train` embeds as its default:
# the Python 3.11 tutorial (reStructuredText sources) from Debian's python3.11-doc package.
# Licence: PSF License Version 2 (crates/cli/assets/LICENSE-PSF.txt); source: docs.python.org.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download python3.11-doc >/dev/null && dpkg -x python3.11-doc_*.deb x)
src="$work/x/usr/share/doc/python3.11/html/_sources"
out="$root/crates/cli/assets"
mkdir -p "$out"
: > "$out/python-tutorial.txt.tmp"
for f in appetite interpreter introduction controlflow datastructures modules inputoutput errors classes \
         stdlib stdlib2 venv whatnow interactive floatingpoint appendix; do
  cat "$src/tutorial/$f.rst.txt" >> "$out/python-tutorial.txt.tmp"
  printf '\n\n' >> "$out/python-tutorial.txt.tmp"
done
mv "$out/python-tutorial.txt.tmp" "$out/python-tutorial.txt"
cp "$src/license.rst.txt" "$out/LICENSE-PSF.txt"
