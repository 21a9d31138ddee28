"""Prepare a public data set as PNGs + MONAI datalist: a thin wrapper of ``cfattr prepare``.

Usage: ``python scripts/prepare_data.py {mini-mias,shenzhen,cbis-ddsm} --src DIR --out DIR [--size H W] [--seed S]``
(``--help`` for all options; docs/phantoms.md describes each data set).
"""

import sys

from cfattr_monai.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
