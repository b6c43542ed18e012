#!/bin/sh
# Fetch the training trees listed in LIST (docker/reference-sources.txt) into DEST/<folder>, checking each archive's
# kept paths against their listed sha256 before anything is kept. Exits 1, naming the archive, on a failed download
# or a mismatch; DEST then holds nothing of it.
set -eu
list=$1
dest=$2
mkdir -p "$dest"
grep -Ev '^[[:space:]]*(#|$)' "$list" | while read -r folder url inner paths sum; do
    work=$(mktemp -d)
    curl -fsSL --retry 3 "$url" | tar -xz -C "$work" || { echo "could not download $url" >&2; exit 1; }
    root="$work/$(ls "$work" | head -n 1)/$inner"
    kept=$(echo "$paths" | tr ',' ' ')
    # shellcheck disable=SC2086  # the kept paths are separate words
    actual=$(cd "$root" && find $kept -type f | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum | cut -d' ' -f1)
    if [ "$actual" != "$sum" ]; then
        echo "$url ($paths): sha256 $actual does not match $sum listed in $list" >&2
        exit 1
    fi
    mkdir -p "$dest/$folder"
    # shellcheck disable=SC2086
    (cd "$root" && tar -cf - $kept) | tar -xf - -C "$dest/$folder"
    rm -rf "$work"
done
