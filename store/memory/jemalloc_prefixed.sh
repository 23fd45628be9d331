#!/bin/sh
# jemalloc_prefixed.sh - a copy of the system's static jemalloc whose public symbols carry the
# je_ prefix (malloc -> je_malloc, mallocx -> je_mallocx, malloc_conf -> je_malloc_conf, ...),
# as `configure --with-jemalloc-prefix=je_` would build it, for -Dserver_heap=system: the region
# code keeps jemalloc's arena API while malloc, free and operator new stay the system's (or a
# sanitizer's). jemalloc's operator new/delete member is dropped. Debian ships jemalloc only
# unprefixed, hence the rename of the built archive rather than a build of jemalloc.
# Usage: jemalloc_prefixed.sh IN.a OUT.a OBJCOPY AR NM
set -eu
in=$1 out=$2 objcopy=$3 ar=$4 nm=$5
tmp=$out.tmp
rm -f "$tmp" "$out"
cp "$in" "$tmp"
# The C++ operators: the server's new/delete must not come from this copy.
cpp_member=$("$ar" t "$tmp" | grep '^jemalloc_cpp\.' || true)
[ -z "$cpp_member" ] || "$ar" d "$tmp" $cpp_member
# Every global symbol defined by the archive that is not already one of jemalloc's private
# (je_*) names: the public API, malloc_conf and malloc_message.
"$nm" -g --defined-only "$tmp" 2>/dev/null |
  awk 'NF == 3 && $3 !~ /^je_/ && $3 !~ /^DW\.ref\./ { print $3 " je_" $3 }' | sort -u > "$tmp.syms"
grep -q '^mallocx je_mallocx$' "$tmp.syms" || { echo "$in: no mallocx to rename" >&2; exit 1; }
"$objcopy" --redefine-syms="$tmp.syms" "$tmp"
rm -f "$tmp.syms"
mv "$tmp" "$out"
