#!/usr/bin/env bash
# Rebuild crates/cli/assets/python-docs.txt, the corpus `octet train` embeds as its default: the
# Python 3.11 tutorial, FAQ and language reference (reStructuredText sources, ~0.9 MB) from Debian's
# python3.11-doc package.
# Licence: PSF License Version 2 (crates/cli/assets/LICENSE-PSF.txt); source: docs.python.org.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download python3.11-doc >/dev/null && dpkg -x python3.11-doc_*.deb x)
src="$work/x/usr/share/doc/python3.11/html/_sources"
out="$root/crates/cli/assets"
mkdir -p "$out"
: > "$out/python-docs.txt.tmp"
for f in tutorial/{appetite,interpreter,introduction,controlflow,datastructures,modules,inputoutput,errors,classes,stdlib,stdlib2,venv,whatnow,interactive,floatingpoint,appendix} \
         faq/{general,programming,design,library,extending,windows,gui,installed} \
         reference/{introduction,lexical_analysis,datamodel,executionmodel,import,expressions,simple_stmts,compound_stmts,toplevel_components,grammar}; do
  cat "$src/$f.rst.txt" >> "$out/python-docs.txt.tmp"
  printf '\n\n' >> "$out/python-docs.txt.tmp"
done
mv "$out/python-docs.txt.tmp" "$out/python-docs.txt"
cp "$src/license.rst.txt" "$out/LICENSE-PSF.txt"
