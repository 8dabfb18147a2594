"""`python -m data_pipelines.prepare`: see data_pipelines/prepare/__init__.py."""

import sys

from data_pipelines import prepare

sys.exit(prepare.main())
