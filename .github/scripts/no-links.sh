#!/usr/bin/env bash
# Fail if any PATH is, passes through or holds a symbolic link. Run on directories a container
# wrote before the host reads or uploads them: upload-artifact and upload-pages-artifact follow
# links, so a link planted there would publish whatever host file it points at.
#   usage: .github/scripts/no-links.sh RELATIVE-PATH...
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 PATH..." >&2
    exit 2
fi
status=0
for path in "$@"; do
    if [[ $path == /* || $path == *..* ]]; then
        echo "$0: $path: give a path inside the working directory" >&2
        exit 2
    fi
    # A linked parent (.asv -> elsewhere) redirects everything below it.
    prefix=""
    IFS=/ read -r -a parts <<< "$path"
    for part in "${parts[@]}"; do
        prefix="${prefix:+$prefix/}$part"
        if [[ -L $prefix ]]; then
            printf 'symbolic link: %q\n' "$prefix"
            status=1
            continue 2
        fi
    done
    [[ -e $path ]] || continue
    # Names are the container's: quoted (%q) and never at the start of a line, so none can be
    # read as a workflow command.
    while IFS= read -r -d '' link; do
        printf 'symbolic link: %q\n' "$link"
        status=1
    done < <(find "$path" -type l -print0)
done
if (( status != 0 )); then
    echo "::error::symbolic links in the container's output; nothing was uploaded"
fi
exit "$status"
