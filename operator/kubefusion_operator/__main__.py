import sys

from kubefusion_operator.cli import main

sys.exit(main())
