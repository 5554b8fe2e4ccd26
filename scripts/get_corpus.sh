#!/usr/bin/env bash
# Long public-domain books from Debian packages, one plain-text file per book, for
# docs/training.md. Usage: scripts/get_corpus.sh [OUT_DIR]   (default: runs/corpus, git-ignored)
#   OUT_DIR/austen/<book>.txt     Jane Austen's six novels (r-cran-janeaustenr, as R data)
#   OUT_DIR/kjv/NN_<book>.txt     the King James Bible, one file per book (bible-kjv)
#   OUT_DIR/tdavid/psalm_NNN.txt  Spurgeon's Treasury of David, one file per psalm, markup
#                                 stripped (sword-comm-tdavid, read with mod2imp)
set -euo pipefail
out="${1:-runs/corpus}"
pkgs=(r-base-core r-cran-janeaustenr bible-kjv bible-kjv-text sword-comm-tdavid libsword-utils
      python3)
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
# The Bible: `bible` prints chapters headed "Book N" and verses "  V text" wrapped at 80
# columns; a book is written whole, one verse per line, without the verse numbers.
bible -l1000000 Gen1:1-Rev22:21 | OUT_DIR="$out/kjv" python3 -c '
import os, re, sys
out = os.environ["OUT_DIR"]; os.makedirs(out, exist_ok=True)
books, cur = [], None
for line in sys.stdin:
    line = line.rstrip("\n")
    m = re.fullmatch(r"([1-3]? ?[A-Z][A-Za-z ]+) ([0-9]+)", line)
    if m:
        if not books or books[-1][0] != m.group(1):
            books.append((m.group(1), []))
        continue
    v = re.match(r"\s*[0-9]+ (.*)", line)
    if v:
        books[-1][1].append(v.group(1))
    elif line.strip():
        books[-1][1][-1] += " " + line.strip()
for i, (name, verses) in enumerate(books, 1):
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower())
    with open(os.path.join(out, "%02d_%s.txt" % (i, slug)), "w") as f:
        f.write("\n".join(verses) + "\n")
'
# The Treasury of David: one entry per psalm (and verse groups), OSIS markup; tags removed,
# paragraphs kept as lines, the entries of a psalm joined in order.
mod2imp TDavid | OUT_DIR="$out/tdavid" python3 -c '
import html, os, re, sys
out = os.environ["OUT_DIR"]; os.makedirs(out, exist_ok=True)
psalms, cur = {}, None
for line in sys.stdin:
    m = re.match(r"\$\$\$Psalms ([0-9]+):", line)
    if m:
        cur = int(m.group(1)); continue
    if line.startswith("$$$"):
        cur = None; continue
    if cur:
        t = re.sub(r"<div [^>]*eID=[^>]*/>", "\n", line)
        t = html.unescape(re.sub(r"<[^>]*>", " ", t))
        t = "\n".join(re.sub(r"[ \t]+", " ", p).strip() for p in t.split("\n"))
        psalms.setdefault(cur, []).append(re.sub(r"\n{2,}", "\n", t).strip())
for n, parts in psalms.items():
    with open(os.path.join(out, "psalm_%03d.txt" % n), "w") as f:
        f.write("\n".join(p for p in parts if p) + "\n")
'
wc -c "$out"/austen/*.txt | tail -n 1
echo "kjv: $(ls "$out"/kjv | wc -l) books, $(cat "$out"/kjv/*.txt | wc -c) bytes"
echo "tdavid: $(ls "$out"/tdavid | wc -l) psalms, $(cat "$out"/tdavid/*.txt | wc -c) bytes"
