#!/usr/bin/env bash
# with_hugepages.sh PAGES COMMAND [ARGS...] - runs COMMAND where at least PAGES huge pages are
# free in the hugetlbfs pool, so that stores it starts get huge pages by default.
# If fewer are free and /proc/sys/vm/nr_hugepages can be written (root), the pool is grown by
# what is missing for the run and set back to its size afterwards, also when the run is
# stopped. Exits 77 (skipped) where there is no hugetlbfs or the pages cannot be had.
set -u
need=$1
shift
meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
free=$(meminfo HugePages_Free)
if [ -z "$free" ]; then
  echo "this kernel has no hugetlbfs: skipped"
  exit 77
fi
knob=/proc/sys/vm/nr_hugepages
if [ "$free" -lt "$need" ] && [ -w "$knob" ]; then
  before=$(cat "$knob")
  trap 'echo "$before" > "$knob" 2>/dev/null' EXIT
  trap 'exit 143' TERM INT HUP
  echo $((before + need - free)) > "$knob" 2>/dev/null
  free=$(meminfo HugePages_Free)
fi
if [ "$free" -lt "$need" ]; then
  echo "$free huge pages free, $need needed (reserve them with sysctl vm.nr_hugepages): skipped"
  exit 77
fi
"$@"
