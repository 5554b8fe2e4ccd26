#!/usr/bin/env bash
# Long public-domain books from Debian packages, one plain-text file per book, for
# docs/training.md. Usage: scripts/get_corpus.sh [OUT_DIR]   (default: runs/corpus, git-ignored)
#   OUT_DIR/austen/<book>.txt   Jane Austen's six novels (r-cran-janeaustenr, as R data)
set -euo pipefail
out="${1:-runs/corpus}"
pkgs=(r-base-core r-cran-janeaustenr)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
mkdir -p "$out/austen"
# austen_books() holds one row per printed line; blank lines are empty strings. Each book is
# written whole, lines joined with "\n", as it appears in the Project Gutenberg text.
OUT_DIR="$out/austen" Rscript --vanilla -e '
  library(janeaustenr)
  b <- austen_books()
  for (title in levels(b$book)) {
    slug <- tolower(gsub("[^A-Za-z]+", "_", title))
    writeLines(b$text[b$book == title], file.path(Sys.getenv("OUT_DIR"), paste0(slug, ".txt")), useBytes = TRUE)
  }'
wc -c "$out"/austen/*.txt
