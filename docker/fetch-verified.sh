#!/bin/sh
# Download every "<sha256>  <url>" line of LIST into DIR and check each file against its checksum before anything
# installs it. Blank lines and # comments are skipped. Exits 1, naming the file, on a failed download or a mismatch.
set -eu
list=$1
dir=$2
mkdir -p "$dir"
grep -Ev '^[[:space:]]*(#|$)' "$list" > "$dir/.wanted" || true
if [ ! -s "$dir/.wanted" ]; then
    echo "$list lists no packages" >&2
    exit 1
fi
while read -r sum url; do
    name=$(basename "$url" | sed 's/%2B/+/g')
    curl -fsSL --retry 3 -o "$dir/$name" "$url" || { echo "could not download $url" >&2; exit 1; }
    actual=$(sha256sum "$dir/$name" | cut -d' ' -f1)
    if [ "$actual" != "$sum" ]; then
        echo "$name: sha256 $actual does not match $sum listed in $list" >&2
        rm -f "$dir/$name"
        exit 1
    fi
done < "$dir/.wanted"
rm -f "$dir/.wanted"
