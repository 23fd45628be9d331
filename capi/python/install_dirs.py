"""Prints where `meson install` puts the Python package under PREFIX (line 1) and the library
directory LIBDIR relative to it (line 2). Run by capi/python/meson.build with the target Python.

Usage: install_dirs.py PREFIX LIBDIR"""

import os
import sys
import sysconfig

prefix, libdir = sys.argv[1], sys.argv[2]
# The purelib directory of the Python's default install scheme, relative to its data root:
# lib/python3.11/dist-packages on Debian, lib/python3.11/site-packages elsewhere and in venvs.
purelib = sysconfig.get_path("purelib")
base = sysconfig.get_path("data")
rel = os.path.relpath(purelib, base)
if rel.startswith(".."):
    rel = os.path.join("lib", "python%d.%d" % sys.version_info[:2], "site-packages")
site = os.path.join(prefix, rel)
print(site)
print(os.path.relpath(libdir, os.path.join(site, "storeclient")))
