"""``python -m monai_scrd.prepare``: build the bundle's datalist JSON (see ``monai_scrd.data.prepare``)."""

import sys

from monai_scrd.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
